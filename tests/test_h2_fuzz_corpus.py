"""The fuzzer's corpus (tests/fuzz/corpus/h2, written by tests/fuzz/make_corpus.py, grown by
scripts/fuzz-h2.sh) replayed through the native gRPC front: every input goes through grpc_server.Connection
into predictor._h2 and libnghttp2 as a client's connection would, and must leave no stream, no held byte
and no log line behind. The attacks in it must meet the front's per-connection limits. In a child process:
grpc_server imports kserve's protobuf messages, which cannot share a process with tritonclient's."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.fuzz import make_corpus

from .conftest import REPO

CORPUS = REPO / "tests" / "fuzz" / "corpus" / "h2"
PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 1, 2, 3, 6, 11

pytestmark = pytest.mark.skipif(importlib.util.find_spec("predictor._h2") is None,
                                reason="predictor._h2 is not built; test_grpc_front checks that it is")


@pytest.fixture(scope="module")
def replayed() -> dict[str, dict]:
    run = subprocess.run([sys.executable, "-m", "tests.fuzz.h2_fuzz", "--replay", str(CORPUS)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return {result["name"]: result for result in map(json.loads, run.stdout.splitlines())}


def test_every_input_replays_cleanly(replayed):
    """No crash, no broken invariant (h2_fuzz.Harness asserts them), and nothing logged: what a client
    does wrong is answered on the wire, not in the server's log."""
    assert set(replayed) == {path.name for path in CORPUS.iterdir()}
    assert {name: r["warnings"] for name, r in replayed.items() if r["warnings"]} == {}


def test_the_seeds_in_the_repo_are_what_the_generator_writes():
    for name, data in make_corpus.seeds().items():
        assert (CORPUS / name).read_bytes() == data, f"{name}: run python -m tests.fuzz.make_corpus"


def test_ordinary_calls_are_answered(replayed):
    for name in ("calls", "calls-odd-reads"):
        assert replayed[name]["replies"] == 7 and not replayed[name]["closed"], replayed[name]  # 4 calls, 3 with trailers
    assert replayed["calls-read-byte-by-byte"]["replies"] == 4


def test_rapid_reset_costs_no_call_and_ends_the_connection(replayed):
    """1,100 requests each reset at once (CVE-2023-44487): libnghttp2's reset budget (1,000 at once,
    then 33 a second per connection; lib/nghttp2_session.c, session_update_stream_reset_ratelim, in
    Debian's libnghttp2-14 since 1.52.0-1+deb12u1) sends GOAWAY; the server begins none of those calls, and
    neither answers nor resets streams the client already reset."""
    r = replayed["rapid-reset"]
    assert r["closed"] and r["goaway"] == [INTERNAL_ERROR], r
    assert r["calls"] == 0 and r["resets"] == [] and r["replies"] == 0, r


def test_a_continuation_flood_closes_the_connection(replayed):
    """HEADERS then CONTINUATION frames without end (CVE-2024-28182): libnghttp2 allows 8 per block
    (lib/nghttp2_session.c, max_continuations), then the session fails and the server closes."""
    r = replayed["continuation-flood"]
    assert r["closed"] and r["calls"] == 0, r


def test_more_streams_than_the_limit_end_the_connection(replayed):
    """SETTINGS_MAX_CONCURRENT_STREAMS 1,000 (grpc_server.MAX_STREAMS), acknowledged: the 1,001st open
    stream is a connection error (RFC 9113 5.1.2; lib/nghttp2_session.c, nghttp2_session_on_request_headers_received)."""
    r = replayed["streams-over-the-limit"]
    assert r["closed"] and r["goaway"] == [PROTOCOL_ERROR] and r["calls"] == 0, r


def test_header_lists_past_the_limit_are_refused_without_a_call(replayed):
    """An HPACK bomb (one 4 kB table entry referenced 12,000 times: 48 MB of header list from 16 kB) and
    a 20 kB header block read 1,000 bytes at a time: each gets its RESOURCE_EXHAUSTED reply, no call."""
    for name in ("hpack-bomb", "oversized-headers-split-across-reads"):
        r = replayed[name]
        assert r["replies"] == 1 and r["calls"] == 0 and not r["closed"], (name, r)
    assert replayed["hpack-table-size-update-too-large"]["goaway"] == [9]  # COMPRESSION_ERROR


def test_floods_and_window_abuse_end_the_connection(replayed):
    for name in ("ping-flood", "ping-flood-unread", "settings-flood"):  # libnghttp2's max_outbound_ack: 1,000
        assert replayed[name]["closed"], (name, replayed[name])
    assert replayed["huge-settings"]["goaway"] == [ENHANCE_YOUR_CALM]  # more than 32 entries (max_settings)
    assert replayed["settings-frame-too-large"]["goaway"] == [FRAME_SIZE_ERROR]
    assert replayed["window-update-overflow-connection"]["goaway"] == [FLOW_CONTROL_ERROR]
    assert replayed["initial-window-too-large"]["goaway"] == [FLOW_CONTROL_ERROR]
    stream = replayed["window-update-overflow-stream"]
    assert stream["resets"] == [FLOW_CONTROL_ERROR] and not stream["closed"], stream


def test_a_reply_stuck_behind_a_zero_window_is_reset_by_the_stall_sweep(replayed):
    assert replayed["zero-window-then-stall"]["resets"] == [8]  # CANCEL
    assert replayed["zero-window-then-open"]["written"] > 9000  # the 9 kB reply went out once the window opened
