"""The short soak (benchmarks/soak.py for 60 s; run it without flags for the full 10 minutes):
--workers 2 under REST and gRPC load at concurrency 64 answers every request, and no process's RSS
grows 10% after the warm-up."""
from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO


def test_short_soak_has_no_errors_and_flat_memory(model_dir, tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--seconds", "60", "--warmup", "20",
                          "--model_dir", str(model_dir), "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["errors"] == 0, summary["first_errors"]
    assert summary["rest"] > 0 and summary["grpc"] > 0
    assert len(summary["rss"]) == 3, summary["rss"]  # the parent and both workers were sampled
    assert summary["max_growth"] < 0.10, summary["rss"]
    assert summary["still_ready"] and summary["exit_code_on_sigterm"] == 0
    assert run.returncode == 0 and summary["passed"]
