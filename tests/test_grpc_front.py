"""The gRPC port's two servers: libnghttp2 in process (the default, predictor/grpc_server.py) and KServe's
grpcio server with our servicer (--grpc_front kserve, the fallback). Tests on the shared `server`
fixture run on the default."""
from __future__ import annotations

import gzip
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import MODEL_NAME, start_server, stop_server, wait_ready
from .test_metrics import scrape, value
from .test_serving import card, histories, window  # noqa: F401 (fixtures)


def infer(srv, history: np.ndarray, **kwargs):
    tensor = grpcclient.InferInput("history", list(history.shape), "FP32")
    tensor.set_data_from_numpy(history)
    return grpcclient.InferenceServerClient(srv.grpc_host).infer(MODEL_NAME, [tensor], **kwargs)


def test_the_native_front_is_built():
    """Without its compiled part the server falls back to KServe's grpcio server and the native server's
    tests skip; here, where the install had a compiler, that would be a broken build."""
    try:
        import predictor._h2  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"predictor._h2 is not built ({exc}): setup.py needs a C compiler, Python's headers and "
                    "libnghttp2.so.14")


def test_kserve_front_serves_the_same_forecasts(server, model_dir, tmp_path, window):
    """--grpc_front kserve: grpcio's server on the public port; same answers, same errors."""
    srv = start_server(model_dir, tmp_path / "kserve.log", "--grpc_front", "kserve")
    try:
        wait_ready(srv)
        history = histories(3, window + 10)
        for name in ("p10", "p50", "p90"):
            np.testing.assert_array_equal(infer(srv, history).as_numpy(name), infer(server, history).as_numpy(name))
        with pytest.raises(InferenceServerException) as direct:
            infer(srv, history[:, :10])
        with pytest.raises(InferenceServerException) as fronted:
            infer(server, history[:, :10])
        assert direct.value.status() == fronted.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert direct.value.message() == fronted.value.message()
    finally:
        stop_server(srv)


def test_compressed_calls_are_read(server, window):
    history = histories(2, window)
    plain = infer(server, history).as_numpy("p50")
    for algorithm in ("gzip", "deflate"):
        np.testing.assert_array_equal(infer(server, history, compression_algorithm=algorithm).as_numpy("p50"), plain)


def raw_call(srv, frame: bytes, encoding: bytes | None = None) -> tuple[int, dict]:
    """One unary call as bytes on the wire, via curl's HTTP/2 (prior knowledge): status and trailers."""
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if encoding:
        headers += ["-H", b"grpc-encoding: " + encoding]
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-D", "-", "--data-binary", "@-", *headers,
                          f"http://{srv.grpc_host}/inference.GRPCInferenceService/ModelInfer"],
                         input=frame, capture_output=True, timeout=30).stdout
    lines = [line.decode(errors="replace").strip() for line in out.split(b"\r\n")]
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    return int(fields.get("grpc-status", -1)), fields


@pytest.mark.skipif(subprocess.run(["curl", "--version"], capture_output=True).stdout.find(b"HTTP2") < 0,
                    reason="this curl has no HTTP/2")
def test_malformed_frames_get_a_grpc_status(server):
    from tritonclient.grpc.service_pb2 import ModelInferRequest  # kserve's own cannot share this process

    def framed(message: bytes, flag: bytes = b"\x00") -> bytes:
        return flag + struct.pack(">I", len(message)) + message

    message = ModelInferRequest(model_name=MODEL_NAME).SerializeToString()
    bomb = gzip.compress(b"\x00" * (20 << 20))  # 20 MiB of zeros in ~20 kB; KServe's limit is 8 MiB
    cases = {
        "short frame": (b"\x00\x00\x00", None, 3),
        "length past the body": (b"\x00" + struct.pack(">I", 99) + message, None, 3),
        "not protobuf": (framed(b"\xff\xff\xff"), None, 3),
        "unknown compression": (framed(message, b"\x01"), b"snappy", 12),
        "compression not named": (framed(message, b"\x01"), None, 13),
        "compression name not UTF-8": (framed(message, b"\x01"), b"\xff\xfe", 12),
        "gzip that is not": (framed(b"nope", b"\x01"), b"gzip", 3),
        "gzip bomb": (framed(bomb, b"\x01"), b"gzip", 8),
        "no inputs": (framed(message), None, 3),
        "100 kB model name": (framed(ModelInferRequest(model_name="m" * 100_000).SerializeToString()), None, 5),
    }
    before = scrape(server)
    for name, (frame, encoding, expected) in cases.items():
        status, fields = raw_call(server, frame, encoding)
        assert status == expected, f"{name}: {fields}"
        assert 0 < len(fields.get("grpc-message", "")) < 1200, name
    after = scrape(server)
    # counted as REST counts its rejections; "no inputs" reached the model and counts under its name
    for reason, calls in {"invalid_request": 5, "unsupported_media_type": 2, "too_large": 1, "unknown_model": 1}.items():
        counted = [value(samples, "perf_predictor_client_errors_total", model="unknown", protocol="grpc", reason=reason)
                   for samples in (before, after)]
        assert counted[1] - counted[0] == calls, reason
    # a well-formed compressed call reaches the model's checks
    status, fields = raw_call(server, framed(gzip.compress(message), b"\x01"), b"gzip")
    assert status == 3 and "no inputs" in fields["grpc-message"]
    assert infer(server, histories(1, 400)).as_numpy("p50").shape == (1, 12)  # still serving


def call_with_nghttp(srv, frame: Path) -> list[str]:
    """nghttp (Debian nghttp2-client) shows the frames it receives, GOAWAY among them."""
    return ["nghttp", "-v", "-n", "-d", str(frame), "-H", "content-type:application/grpc", "-H", "te:trailers",
            f"http://{srv.grpc_host}/inference.GRPCInferenceService/ModelInfer"]


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) is not installed; .ci/run installs it")
def test_sigterm_moves_grpc_clients_away_before_stopping(model_dir, tmp_path, window):
    """On SIGTERM the call in flight, and a call on a new connection within --drain_seconds, are both
    answered, each reply with an HTTP/2 GOAWAY (NO_ERROR) so the client goes elsewhere next; then the
    server exits 0 and the port closes. Without the drain, the second call failed with UNAVAILABLE."""
    from tritonclient.grpc.service_pb2 import ModelInferRequest

    history = histories(1, window)
    request = ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[history.astype("<f4").tobytes()])
    request.inputs.add(name="history", datatype="FP32", shape=list(history.shape))
    message = request.SerializeToString()
    frame = tmp_path / "call.bin"
    frame.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    # every batch is held 0.5 s, so the first call is still in flight when SIGTERM comes
    srv = start_server(model_dir, tmp_path / "server.log", "--max_batch_delay_ms", "500", "--drain_seconds", "3")
    in_flight = None
    try:
        wait_ready(srv)
        in_flight = subprocess.Popen(call_with_nghttp(srv, frame), stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while value(scrape(srv), "perf_predictor_requests_in_flight", protocol="grpc") < 1:
            assert time.monotonic() < deadline, "the first call never reached the model"
            time.sleep(0.02)
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        later = subprocess.run(call_with_nghttp(srv, frame), capture_output=True, text=True, timeout=30).stdout
        for name, out in (("in flight", in_flight.communicate(timeout=30)[0]), ("after SIGTERM", later)):
            assert "grpc-status: 0" in out, f"{name}:\n{out}"
            assert re.search(r"recv GOAWAY frame .*\n.*error_code=NO_ERROR", out), f"{name}:\n{out}"
        assert srv.process.wait(timeout=20) == 0
        assert "draining gRPC connections; stopping in 3s" in srv.log()
        assert "(libnghttp2)" in srv.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.grpc_port), timeout=2).close()
    finally:
        if in_flight is not None and in_flight.poll() is None:
            in_flight.kill()
        stop_server(srv)


def test_a_taken_grpc_port_stops_start_up(model_dir, tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        srv = start_server(model_dir, tmp_path / "server.log", "--grpc_port", str(port))
        try:
            assert srv.process.wait(timeout=120) == 1
        finally:
            stop_server(srv)
    assert f"gRPC front not started: gRPC port {port} is not free" in srv.log()


def check_message_size_limits(srv, window) -> None:
    assert infer(srv, histories(20, window)).as_numpy("p50").shape == (20, 12)  # ~27 kB in, ~3 kB out
    for series in (50, 100):  # ~67 kB in and ~7 kB out: too much to send; ~134 kB in: too much to take
        with pytest.raises(InferenceServerException) as too_large:
            infer(srv, histories(series, window))
        assert too_large.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert ("Sent" if series == 50 else "received") + " message larger than max" in too_large.value.message()
    assert infer(srv, histories(20, window)).as_numpy("p50").shape == (20, 12)  # still serving


SIZE_LIMITS = ("--grpc_max_receive_message_length", "100000", "--grpc_max_send_message_length", "5000")


def test_message_size_flags_apply_to_the_native_front(model_dir, tmp_path, window):
    srv = start_server(model_dir, tmp_path / "server.log", *SIZE_LIMITS)
    try:
        wait_ready(srv)
        check_message_size_limits(srv, window)
    finally:
        stop_server(srv)
