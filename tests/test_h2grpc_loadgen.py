"""benchmarks/h2grpc.c, the open-loop gRPC load generator benchmarks/overload.py uses for its gRPC phase,
built with the machine's C compiler and run against a real `python -m predictor`: it offers the rate it
is asked for (not the rate the server sets, as a closed loop would), and reads each call's grpc-status,
which tells a refusal (UNAVAILABLE, trailers-only, HTTP 200) from an answer where h2load cannot."""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, start_server, stop_server, wait_ready
from .test_serving import card, window  # noqa: F401 (fixtures)

sys.path.insert(0, str(REPO / "benchmarks"))
import h2grpc  # noqa: E402


def _nghttp2_missing() -> bool:
    try:
        ctypes.CDLL(h2grpc.LIBRARY)
        return False
    except OSError:
        return True


pytestmark = [
    pytest.mark.skipif(h2grpc.compiler() is None, reason="no C compiler (cc); .ci/run installs gcc"),
    pytest.mark.skipif(_nghttp2_missing(), reason=f"no {h2grpc.LIBRARY} (Debian libnghttp2-14)"),
]


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return h2grpc.build(tmp_path_factory.mktemp("h2grpc"))


@pytest.fixture(scope="module")
def body(tmp_path_factory, window):
    # in a subprocess: the benchmarks build the request from kserve's protos, which cannot share a process
    # with tritonclient's (the same message names), and other tests load those
    path = tmp_path_factory.mktemp("h2grpc-body") / "infer.grpc"
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import h2grpc; "
                    f"from pathlib import Path; h2grpc.write_body(Path({str(path)!r}), {window}, 1)"], check=True)
    return path


def summary_count(calls: h2grpc.Calls, what: str) -> int:
    return int(re.search(rf"{what} (\d+)", calls.summary).group(1))


def test_offers_the_rate_asked_for_and_every_call_is_answered(server, binary, body, tmp_path):
    connections, rps, seconds = 4, 40, 1.5
    run = h2grpc.calls(binary, server.grpc_port, body, connections, rps, seconds, tmp_path / "calls.tsv")
    assert (run.status == 0).all(), (np.unique(run.status, return_counts=True), run.summary)
    # Connection i opens at i/(N R) s and its calls are due every 1/R s from then until the end, so
    # sum_i ceil(R S - i/N) = N R S = 240 calls are due (i/N < 1). No more can be sent: a closed loop
    # would send over 1,000 a second on this server. Fewer only if replies are late at the end (the
    # call due while one is in flight waits for its reply): a stall of up to 0.25 s on a busy machine.
    due = connections * rps * seconds
    assert due - connections * rps * 0.25 <= len(run.status) <= due, run.summary
    assert len(run.status) + summary_count(run, "due but unsent") <= due
    # the connections do not send in lockstep: their first calls are spread over the first interval
    # (every 1/(N R) = 6.25 ms), not all at once
    first = np.sort(run.start)[:connections]
    assert first[-1] - first[0] >= 0.5 * (connections - 1) / (connections * rps), first
    assert (run.start.max() - run.start.min()) >= seconds - 2 / rps  # the whole duration, paced
    assert summary_count(run, "lost") == 0, run.errors

    # --rps 0 with --requests: a closed loop of exactly that many calls
    closed = h2grpc.calls(binary, server.grpc_port, body, 2, 0, None, tmp_path / "closed.tsv", requests=51)
    assert len(closed.status) == 51 and (closed.status == 0).all(), closed.summary


@pytest.fixture(scope="module")
def holding_server(model_dir, tmp_path_factory):
    """One place, and every batch held open 200 ms: the call that takes the place is answered after about
    200 ms, the calls arriving meanwhile are refused at once (trailers-only UNAVAILABLE, HTTP 200)."""
    srv = start_server(model_dir, tmp_path_factory.mktemp("holding") / "server.log", "--max_requests_held", "1",
                       "--max_batch_delay_ms", "200", "--drain_seconds", "0")
    try:
        wait_ready(srv)
        yield srv
    finally:
        stop_server(srv)


def test_tells_refusals_from_answers(holding_server, binary, body, tmp_path):
    run = h2grpc.calls(binary, holding_server.grpc_port, body, 4, 20, 1.5, tmp_path / "calls.tsv")
    assert set(np.unique(run.status)) == {0, 14}, run.summary
    answered, refused = run.seconds[run.status == 0], run.seconds[run.status == 14]
    assert len(answered) >= 3 and len(refused) >= 3 * len(answered), run.summary
    assert answered.min() >= 0.15, answered  # held by the batch delay
    assert np.percentile(refused, 90) < answered.min() and np.median(refused) < 0.1 * np.median(answered), \
        (np.percentile(refused, [50, 90, 100]), answered.min())


def test_under_sanitizers_a_timed_out_call_is_cancelled(holding_server, body, tmp_path):
    # built with ASan (leaks too, at exit) and UBSan: open loop, refusals, and calls held past --timeout,
    # which are reset (RST_STREAM CANCEL) and logged with no status (-1) at about the timeout
    binary = h2grpc.build(tmp_path, "-fsanitize=address,undefined", "-fno-omit-frame-pointer", name="h2grpc-asan")
    log = tmp_path / "calls.tsv"
    done = subprocess.run([str(binary), "--port", str(holding_server.grpc_port), "--path", h2grpc.INFER_PATH,
                           "--body", str(body), "--connections", "4", "--rps", "20", "--duration", "1",
                           "--timeout", "0.1", "--log", str(log), "--header", "X-Test: sanitized"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1",
                               "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"})
    assert done.returncode == 0 and "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, \
        done.stderr[-3000:]
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2)
    status, seconds = rows[:, 1], rows[:, 2] / 1e6
    assert {-1, 14} <= set(status.tolist()), done.stdout  # held 200 ms > the 0.1 s timeout
    # (a call that joins a held batch late is answered in time: 0 too)
    assert ((seconds[status == -1] >= 0.1) & (seconds[status == -1] < 0.19)).all(), seconds[status == -1]
    assert (seconds[status >= 0] < 0.15).all(), done.stdout


def test_wrong_path_is_unimplemented(server, binary, body, tmp_path):
    # predictor/grpc_server.py answers a path it does not serve with UNIMPLEMENTED ("Method not found")
    run = h2grpc.calls(binary, server.grpc_port, body, 1, 0, None, tmp_path / "calls.tsv", requests=3,
                       path="/inference.GRPCInferenceService/NoSuchMethod")
    assert run.status.tolist() == [12, 12, 12], run.summary


def test_no_server_no_calls(binary, body, tmp_path):
    # a port nobody listens on: each connection is tried a few times, 100 ms apart, then given up
    from .conftest import free_port

    run = h2grpc.calls(binary, free_port(), body, 2, 10, 5, tmp_path / "calls.tsv")
    assert len(run.status) == 0
    assert summary_count(run, "given up") == 2, run.summary
    assert run.errors.count("Connection refused") == 10, run.errors  # 5 tries each
