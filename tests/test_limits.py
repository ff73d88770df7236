"""How much one request may send, on a real server with small limits: the REST body limit (413 before
the body is read whole), the series limit on every protocol, the JSON arrays pysimdjson cannot
convert, values outside the declared datatype, and the versioned routes."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import MODEL_NAME, REPO, end_process, start_server, wait_ready
from .test_serving import card, get, histories, post, window  # noqa: F401 (fixtures)

MAX_SERIES = 8
# 2^20 numbers past the 2^24 - 1 at which pysimdjson's array length saturates (codec.SATURATED_LENGTH):
# decoding this body aborted the process ("free(): invalid size") before the fix
SATURATING = (1 << 24) + (1 << 20)
MAX_BODY = 2 * SATURATING + 64 * 1024


@pytest.fixture(scope="module")
def limited(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory.mktemp("limits") / "server.log",
                       "--max_request_series", str(MAX_SERIES), "--max_body_bytes", str(MAX_BODY))
    try:
        wait_ready(srv)
        yield srv
    finally:
        end_process(srv.process, 30)


@pytest.fixture(scope="module")
def kserve_front(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory.mktemp("limits-kserve") / "server.log",
                       "--max_request_series", str(MAX_SERIES), "--grpc_front", "kserve")
    try:
        wait_ready(srv)
        yield srv
    finally:
        end_process(srv.process, 30)


def still_up(srv) -> None:
    assert srv.process.poll() is None, srv.log()
    assert get(srv, "/v2/health/ready") == (200, {"ready": True})


def raw_http(srv, head: bytes, body_chunks=(), timeout: float = 30) -> tuple[int, dict, bytes]:
    """Sends a request head and body pieces as given, then reads the reply until the server closes."""
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_text, _, body = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_the_body_that_aborted_the_process_is_a_400(limited):
    """More than 2^24 - 1 numbers in `data`: pysimdjson's array length saturates there and its as_list()
    wrote past its buffer (glibc aborted). The server now refuses it and stays up."""
    body = b'{"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, %d], "data": [' % SATURATING
    body += b"0," * (SATURATING - 1) + b"0]}]}"
    assert len(body) < MAX_BODY
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/infer", body)
    assert status == 400, result
    assert "more numbers than its shape" in result["error"]
    still_up(limited)


@pytest.mark.parametrize("where", ["outputs", "parameters", "shape"])
def test_huge_arrays_outside_data_are_a_400(limited, window, where):
    huge = b"[" + b"0," * (SATURATING - 1) + b"0]"
    tensor = b'"name": "history", "datatype": "FP32", "shape": [1, %d], "data": [%s]' % (
        window, b",".join([b"1.0"] * window))
    if where == "outputs":
        body = b'{"outputs": %s, "inputs": [{%s}]}' % (huge, tensor)
    elif where == "parameters":
        body = b'{"parameters": {"x": %s}, "inputs": [{%s}]}' % (huge, tensor)
    else:
        body = b'{"inputs": [{"name": "history", "datatype": "FP32", "shape": %s, "data": [1]}]}' % huge
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/infer", body)
    assert status == 400, result
    assert "malformed request body" in result["error"]
    still_up(limited)


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL_NAME}/infer", f"/v1/models/{MODEL_NAME}:predict",
                                  f"/v2/models/{MODEL_NAME}/versions/{{version}}/infer", "/v2/models/other/infer",
                                  "/v1/timeseries/forecast"])
def test_a_larger_content_length_is_a_413_before_any_body_is_sent(limited, card, path):
    path = path.format(version=card["version"])
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()
    started = time.monotonic()
    status, headers, body = raw_http(limited, head)
    assert status == 413 and headers.get("connection") == "close", (status, headers, body)
    assert time.monotonic() - started < 10
    error = json.loads(body)["error"]
    message = error["message"] if path.startswith("/v1/timeseries") else error  # KServe's ErrorResponse there
    assert f"at most {MAX_BODY} bytes" in message
    still_up(limited)


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL_NAME}/infer", f"/v1/models/{MODEL_NAME}:predict",
                                  "/v1/timeseries/forecast"])
def test_a_chunked_body_is_refused_once_its_bytes_pass_the_limit(limited, path):
    """No Content-Length: the body is read until it passes the limit, then refused; the rest is never sent."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    piece = b"[" + b"0," * (1 << 19)  # 1 MiB + 1 of a never-ending JSON array
    count = MAX_BODY // len(piece) + 1
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    status, headers, body = raw_http(limited, head, [chunk] * count)
    assert status == 413, body
    still_up(limited)


def v2(history: np.ndarray, datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "history", "datatype": datatype, "shape": list(history.shape),
                                   "data": history.ravel().tolist()}]}).encode()


def test_more_series_than_the_limit_are_refused_on_rest(limited, window):
    too_many = histories(MAX_SERIES + 1, window)
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/infer", v2(too_many))
    assert status == 400 and f"at most {MAX_SERIES} per request" in result["error"], result
    status, result = post(limited, f"/v1/models/{MODEL_NAME}:predict",
                          json.dumps({"instances": too_many.tolist()}).encode())
    assert status == 400 and f"at most {MAX_SERIES} per request" in result["error"], result
    series = [{"type": "univariate_time_series", "name": f"s{i}", "frequency": "minute", "step": 5,
               "start_timestamp": "2026-01-31T00:00:00Z", "series": row} for i, row in enumerate(too_many.tolist())]
    status, result = post(limited, "/v1/timeseries/forecast", json.dumps({"model": MODEL_NAME, "inputs": series, "options": {"horizon": 1}}).encode())
    assert status == 400 and result["error"]["type"] == "too_many_series", result
    status, _ = post(limited, f"/v2/models/{MODEL_NAME}/infer", v2(histories(MAX_SERIES, window)))
    assert status == 200
    metrics = urllib_text(limited, "/metrics")
    assert 'reason="too_many_series"' in metrics


def urllib_text(srv, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(srv.http_url + path, timeout=10) as resp:
        return resp.read().decode()


@pytest.mark.parametrize("front", ["native", "kserve"])
def test_more_series_than_the_limit_are_invalid_argument_on_grpc(request, window, front):
    srv = request.getfixturevalue("limited" if front == "native" else "kserve_front")
    client = grpcclient.InferenceServerClient(srv.grpc_host)
    for batch, ok in ((MAX_SERIES + 1, False), (MAX_SERIES, True)):
        tensor = grpcclient.InferInput("history", [batch, window], "FP32")
        tensor.set_data_from_numpy(histories(batch, window))
        if ok:
            assert client.infer(MODEL_NAME, [tensor]).as_numpy("p50").shape[0] == batch
            continue
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL_NAME, [tensor])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"at most {MAX_SERIES} per request" in err.value.message()
    still_up(srv)


def test_fp32_values_beyond_its_range_are_a_400(limited, window):
    history = histories(1, window).astype(np.float64)
    history[0, 5] = 1e39
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/infer", v2(history, "FP32"))
    assert status == 400, result
    assert "beyond the range of FP32" in result["error"] and "position 5" in result["error"]
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/infer", v2(histories(1, window), "INT32"))
    assert status == 400 and "send FP32 or FP64" in result["error"], result


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                                  b'{"inputs": [{"name": "history", "x": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}]}",
                                  b"\xff\xfe{}", b'{"inputs": [1, 2', b'{"a": "\x01"}', b"", b"nul\x00l",
                                  b'{"\\u0000": null, "inputs": []}',
                                  b'{"inputs": [{"name": "history", "\\u0000x": 1}]}'])
def test_malformed_json_is_a_400(limited, body):
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/infer", body)
    assert status == 400 and set(result) == {"error"}, result
    still_up(limited)


def test_versioned_routes_are_the_models_own(limited, card, window):
    version = card["version"]
    base = f"/v2/models/{MODEL_NAME}/versions/{version}"
    status, metadata = get(limited, base)
    assert status == 200 and metadata["name"] == MODEL_NAME, metadata
    assert get(limited, base + "/ready")[0] == 200
    status, result = post(limited, base + "/infer", v2(histories(1, window)))
    assert status == 200 and result["model_version"] == version, result
    for path in (f"/v2/models/{MODEL_NAME}/versions/0", f"/v2/models/{MODEL_NAME}/versions/0/ready",
                 f"/v2/models/other/versions/{version}/ready"):
        status, result = get(limited, path)
        assert status == 404 and set(result) == {"error"}, (path, result)
    status, result = post(limited, f"/v2/models/{MODEL_NAME}/versions/0/infer", v2(histories(1, window)))
    assert status == 404 and "version 0 does not exist" in result["error"], result
    assert "Traceback" not in limited.log()


DECODER_CHECK = """
import asyncio, json, os, signal, sys
from concurrent.futures.process import BrokenProcessPool
import numpy as np
from predictor import codec, offload
from predictor.contract import HistoryLength, RequestError

window = int(sys.argv[1])
need = HistoryLength(window, 24, 8)
rows = np.random.default_rng(0).uniform(50, 150, size=(8, window))
body = json.dumps({"id": "x" * offload.OFFLOAD_BYTES, "inputs": [{"name": "history", "datatype": "FP64",
                   "shape": [8, window], "data": rows.ravel().tolist()}]}).encode()  # past OFFLOAD_BYTES
inline, inline_reply = codec.decode_v2_body(body, None, need)
decoder = offload.DecoderProcess()

async def scenario():
    history, reply = await decoder.decode_v2_body(body, None, need)
    assert (history == inline).all() and reply == inline_reply
    for pid in list(decoder._pool._processes):
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    try:
        await decoder.decode_v2_body(body, None, need)
        raise AssertionError("a dead helper went unnoticed")
    except BrokenProcessPool:
        pass
    history, _ = await decoder.decode_v2_body(body, None, need)
    assert (history == inline).all()
    try:
        await decoder.decode_v2_body(body.replace(b'"FP64"', b'"INT8"'), None, need)
    except RequestError as exc:  # pickled back from the helper with its reason
        assert exc.code == "wrong_datatype", exc.code
    else:
        raise AssertionError("INT8 accepted")

asyncio.run(scenario())
decoder.close()
print("same answers; helper replaced")
"""


def test_the_decoder_process_answers_as_the_codec_does_and_is_replaced_when_it_dies(window):
    """Large JSON bodies go to a helper process (offload.py): the same answer as decoding inline, client
    errors with their reason; a helper that died fails one request and the next starts a new helper. In
    a process of its own: KServe's and tritonclient's protos cannot share one."""
    done = subprocess.run([sys.executable, "-c", DECODER_CHECK, str(window)], cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert done.stdout.strip() == "same answers; helper replaced", done.stderr[-3000:]
