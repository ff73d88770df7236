"""The benchmark's own accounting (benchmarks/run.py), run with the real load generator against the
served model. Its figures decide the issue's targets, so how it counts is tested like the server."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import MODEL_NAME, REPO
from .test_serving import card, histories, window  # noqa: F401 (fixtures)

H2LOAD = shutil.which("h2load")

# In a subprocess: benchmarks/run.py pins thread counts in os.environ when imported.
RUN_H2LOAD = """
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "benchmarks"))
import run
npy, work, grpc_port, model_name, reply_bytes, duration, warmup = sys.argv[2:]
server = run.Server("under-test", "project", model_name, [], 0, int(grpc_port))
print(json.dumps(run.run_h2load(shutil.which("h2load"), server, Path(npy), int(reply_bytes), 1,
                                float(duration), float(warmup), Path(work))))
"""


@pytest.mark.skipif(H2LOAD is None, reason="h2load (Debian nghttp2-client) is not installed; .ci/run installs it")
def test_h2load_rate_is_over_the_measured_phase_only(server, tmp_path, window):
    """h2load's "finished in" includes --warm-up-time; a rate over it understated every gRPC row by
    warm-up / (warm-up + duration) (23% in `make bench`)."""
    npy = tmp_path / "history.npy"
    np.save(npy, histories(1, window))
    verified = subprocess.run([sys.executable, str(REPO / "benchmarks" / "grpc_load.py"), "--target",
                               server.grpc_host, "--model", MODEL_NAME, "--input", str(npy), "--verify"],
                              capture_output=True, text=True, timeout=120, check=True)
    reply = json.loads(verified.stdout.strip().splitlines()[-1])
    assert reply["ok"], reply
    duration, warmup = 2, 2
    res = subprocess.run([sys.executable, "-c", RUN_H2LOAD, str(REPO), str(npy), str(tmp_path), str(server.grpc_port),
                          MODEL_NAME, str(reply["reply_bytes"]), str(duration), str(warmup)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    # h2load logs each measured call (start µs since the epoch, status, µs to the end of the reply)
    calls = [[int(field) for field in line.split("\t")[:3]]
             for line in (tmp_path / "h2load-requests.tsv").read_text().splitlines()]
    assert result["errors"] == 0 and result["requests"] == len(calls) > 20
    span_s = (max(start + took for start, _, took in calls) - min(start for start, _, _ in calls)) / 1e6
    assert result["rps"] == pytest.approx(len(calls) / span_s, rel=0.1)
