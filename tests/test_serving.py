"""The real server, spoken to by real clients: tritonclient http/grpc, kserve's clients, plain HTTP."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from forecaster import artifact

from .conftest import MODEL_NAME

OUTPUTS = ("p10", "p50", "p90")


@pytest.fixture(scope="module")
def card(model_dir) -> dict:
    return artifact.read_card(model_dir)


@pytest.fixture(scope="module")
def window(card) -> int:
    return card["window"]


@pytest.fixture(scope="module")
def min_history(card) -> int:
    return card["min_history"]


@pytest.fixture(scope="module")
def horizon(card) -> int:
    return card["horizon"]


def histories(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """Daily-cycle series at different levels, like request rates of several services."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(10, 1000, size=(batch, 1))
    daily = 1 + 0.5 * np.sin(2 * np.pi * t / 288 + rng.uniform(0, 6, size=(batch, 1)))
    return (level * daily * rng.lognormal(0, 0.05, size=(batch, length))).astype(np.float32)


def post(server, path: str, body: bytes, content_type: str | None = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(server.http_url + path, data=body, method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(server, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def check_forecast(result: dict[str, np.ndarray], batch: int, horizon: int) -> None:
    for name in OUTPUTS:
        assert result[name].shape == (batch, horizon), name
        assert result[name].dtype == np.float32, name
        assert np.isfinite(result[name]).all(), name
    assert (result["p10"] <= result["p50"]).all() and (result["p50"] <= result["p90"]).all()


def test_health_and_readiness(server):
    assert get(server, "/v2/health/live") == (200, {"live": True})
    assert get(server, "/v2/health/ready") == (200, {"ready": True})
    assert get(server, f"/v2/models/{MODEL_NAME}/ready") == (200, {"name": MODEL_NAME, "ready": True})
    status, body = get(server, "/v2/models/no-such-model/ready")
    assert status == 404 and "error" in body


def test_metadata_declares_the_contract(server, window, horizon):
    status, meta = get(server, f"/v2/models/{MODEL_NAME}")
    assert status == 200
    assert meta["inputs"] == [{"name": "history", "datatype": "FP32", "shape": [-1, window]}]
    assert meta["outputs"] == [{"name": n, "datatype": "FP32", "shape": [-1, horizon]} for n in OUTPUTS]
    grpc_meta = grpcclient.InferenceServerClient(server.grpc_host).get_model_metadata(MODEL_NAME, as_json=True)
    assert [(i["name"], [int(d) for d in i["shape"]]) for i in grpc_meta["inputs"]] == [("history", [-1, window])]
    assert [o["name"] for o in grpc_meta["outputs"]] == list(OUTPUTS)


def triton_http(server, data: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_host, network_timeout=120)
    inp = httpclient.InferInput("history", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    result = client.infer(MODEL_NAME, [inp], outputs=outs)
    return {n: result.as_numpy(n) for n in OUTPUTS}


def triton_grpc(server, data: np.ndarray) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    inp = grpcclient.InferInput("history", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(MODEL_NAME, [inp])
    return {n: result.as_numpy(n) for n in OUTPUTS}


@pytest.mark.parametrize("batch", [1, 256])
def test_tritonclient_http_json(server, window, horizon, batch):
    check_forecast(triton_http(server, histories(batch, window), binary=False), batch, horizon)


@pytest.mark.parametrize("batch", [1, 256])
def test_tritonclient_http_binary(server, window, horizon, batch):
    check_forecast(triton_http(server, histories(batch, window), binary=True), batch, horizon)


@pytest.mark.parametrize("batch", [1, 256])
def test_tritonclient_grpc(server, window, horizon, batch):
    check_forecast(triton_grpc(server, histories(batch, window)), batch, horizon)


def test_every_protocol_gives_the_same_forecast(server, window):
    data = histories(4, window + 50, seed=3)
    reference = triton_grpc(server, data)
    for other in (triton_http(server, data, binary=False), triton_http(server, data, binary=True)):
        for n in OUTPUTS:
            np.testing.assert_allclose(other[n], reference[n], rtol=1e-6)
    status, body = post(server, f"/v1/models/{MODEL_NAME}:predict",
                        json.dumps({"instances": data.tolist()}).encode())
    assert status == 200
    for i, prediction in enumerate(body["predictions"]):
        for n in OUTPUTS:
            np.testing.assert_allclose(prediction[n], reference[n][i], rtol=1e-5)


def test_longer_history_uses_the_last_window_points(server, window):
    data = histories(2, window, seed=5)
    padded = np.concatenate([np.full((2, 100), 1e6, dtype=np.float32), data], axis=1)
    short, long = triton_grpc(server, data), triton_grpc(server, padded)
    for n in OUTPUTS:
        np.testing.assert_array_equal(short[n], long[n])


def test_a_new_series_is_forecast_from_min_history_points(server, model_dir, window, min_history):
    """Cold start: from the model's minimum history (2 hours at a 5-minute step) up to W points, every
    protocol forecasts what the forecaster itself does from that short history; v1 rows may differ in
    length; one point fewer is a 400 that names the minimum."""
    assert min_history < window
    forecaster, _ = artifact.load(str(model_dir))
    short = histories(2, min_history, seed=11)
    expected = forecaster.predict(short)
    for got in (triton_grpc(server, short), triton_http(server, short, binary=False)):
        for q, n in enumerate(OUTPUTS):
            np.testing.assert_allclose(got[n], expected[q], rtol=1e-5, atol=1e-5)
    longer = histories(1, window + 10, seed=12)
    status, body = post(server, f"/v1/models/{MODEL_NAME}:predict",
                        json.dumps({"instances": [short[0].tolist(), longer[0].tolist()]}).encode())
    assert status == 200, body
    expected_longer = forecaster.predict(longer)
    for q, n in enumerate(OUTPUTS):
        np.testing.assert_allclose(body["predictions"][0][n], expected[q][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(body["predictions"][1][n], expected_longer[q][0], rtol=1e-5, atol=1e-5)
    status, body = post(server, f"/v2/models/{MODEL_NAME}/infer",
                        v2_body(window, shape=[1, min_history - 1], data=[1.0] * (min_history - 1)))
    assert status == 400 and f"at least {min_history} points" in body["error"], body


def test_forecast_follows_the_level_of_the_series(server, window):
    """Scale invariance: the same shape at 1000x the level gives a 1000x forecast."""
    data = histories(1, window, seed=9)
    small, big = triton_grpc(server, data), triton_grpc(server, data * 1000)
    np.testing.assert_allclose(big["p50"], small["p50"] * 1000, rtol=1e-3)


def test_fp64_input_accepted(server, window, horizon):
    data = histories(2, window).astype(np.float64)
    client = httpclient.InferenceServerClient(server.http_host)
    inp = httpclient.InferInput("history", list(data.shape), "FP64")
    inp.set_data_from_numpy(data, binary_data=True)
    result = client.infer(MODEL_NAME, [inp])
    check_forecast({n: result.as_numpy(n) for n in OUTPUTS}, 2, horizon)


def test_v1_predict(server, window, horizon):
    data = histories(3, window)
    rows = [row.tolist() for row in data]
    rows[1] = [1.0] * 40 + rows[1]  # v1 rows may differ in length; each uses its last `window` points
    status, body = post(server, f"/v1/models/{MODEL_NAME}:predict", json.dumps({"instances": rows}).encode())
    assert status == 200
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert sorted(prediction) == sorted(OUTPUTS)
        assert all(len(prediction[n]) == horizon for n in OUTPUTS)


def test_json_body_without_content_type_is_read_as_json(server, window, horizon):
    """curl -d sends form-encoded; KServe alone would read the body as binary tensors and fail."""
    body = {"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, window],
                        "data": histories(1, window).ravel().tolist()}]}
    status, result = post(server, f"/v2/models/{MODEL_NAME}/infer", json.dumps(body).encode(),
                          content_type="application/x-www-form-urlencoded")
    assert status == 200, result
    assert {o["name"]: o["shape"] for o in result["outputs"]} == {n: [1, horizon] for n in OUTPUTS}
    status, result = post(server, f"/v2/models/{MODEL_NAME}/infer", json.dumps(body).encode(), content_type=None)
    assert status == 200, result


def test_kserve_clients(server, window):
    """kserve's own REST and gRPC clients. They run in a child process: kserve and tritonclient.grpc
    register the same protobuf package and cannot share one interpreter."""
    data = histories(2, window, seed=11)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("kserve_clients.py")), server.http_url, server.grpc_host,
         MODEL_NAME, json.dumps(data.tolist())],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    reference = triton_grpc(server, data)
    for client in ("rest", "grpc", "grpc_contents"):
        for n in OUTPUTS:
            np.testing.assert_allclose(np.array(results[client][n], dtype=np.float32), reference[n], rtol=1e-6)


def test_v2_nested_rows_forecast_as_flat_data(server, window):
    """The v2 spec allows `data` as nested rows; they take the same fast path as the flat form."""
    data = histories(3, window)
    flat = post(server, f"/v2/models/{MODEL_NAME}/infer", v2_body(window, shape=[3, window], data=data.ravel().tolist()))
    nested = post(server, f"/v2/models/{MODEL_NAME}/infer", v2_body(window, shape=[3, window], data=data.tolist()))
    assert flat[0] == nested[0] == 200, (flat, nested)
    assert flat[1]["outputs"] == nested[1]["outputs"]


def v2_body(window: int, **overrides) -> bytes:
    tensor = {"name": "history", "datatype": "FP32", "shape": [1, window], "data": [1.0] * window}
    tensor.update(overrides)
    return json.dumps({"inputs": [tensor]}).encode()


V2_BAD_INPUTS = {
    "unknown input name": (lambda w: v2_body(w, name="load"), "unknown input 'load'"),
    "wrong datatype": (lambda w: v2_body(w, datatype="INT64", data=[1] * w), "send FP32 or FP64"),
    "wrong rank": (lambda w: v2_body(w, shape=[w]), "shape [batch, length]"),
    "too short": (lambda w: v2_body(w, shape=[1, 10], data=[1.0] * 10), "at least {m} points"),
    "NaN value": (lambda w: v2_body(w, data=[1.0] * (w - 1) + ["NaN"]), "NaN or infinite"),
    "infinite value": (lambda w: v2_body(w, data=["inf"] + [1.0] * (w - 1)), "NaN or infinite"),
    "empty batch": (lambda w: v2_body(w, shape=[0, w], data=[]), "batch is empty"),
    "data shorter than shape": (lambda w: v2_body(w, data=[1.0] * 5), "does not match its shape"),
    "no inputs": (lambda w: b'{"inputs": []}', "no inputs"),
    "inputs not a list": (lambda w: b'{"inputs": 5}', "malformed request body"),
    "non-JSON body": (lambda w: b"this is not json", "not valid JSON"),
    "data not numbers": (lambda w: v2_body(w, data=["high"] * w), "does not match its shape"),
    "data with null": (lambda w: v2_body(w, data=[1.0] * (w - 1) + [None]), "NaN or infinite"),
    "ragged nested rows": (lambda w: v2_body(w, shape=[2, w], data=[[1.0] * (w + 1), [1.0] * (w - 1)]),
                           "does not match its shape"),
    "array first in flat data": (lambda w: v2_body(w, data=[[1.0, 1.0]] + [1.0] * (w - 2)), "does not match its shape"),
    "array inside flat data": (lambda w: v2_body(w, data=[1.0, [1.0, 1.0]] + [1.0] * (w - 3)),
                               "does not match its shape"),
}


@pytest.mark.parametrize("case", sorted(V2_BAD_INPUTS))
def test_v2_bad_input_is_a_400_with_protocol_error(server, window, min_history, case):
    make_body, expected = V2_BAD_INPUTS[case]
    status, body = post(server, f"/v2/models/{MODEL_NAME}/infer", make_body(window))
    assert status == 400, body
    assert set(body) == {"error"} and expected.format(w=window, m=min_history) in body["error"]
    assert get(server, "/v2/health/live") == (200, {"live": True})


V1_BAD_INPUTS = {
    "no instances": (b'{"data": [[1, 2]]}', 'no "instances"'),
    "non-JSON body": (b"{not json", "Unrecognized request format"),
    "too short": (b'{"instances": [[1, 2, 3]]}', "at least"),
    "not numbers": (b'{"instances": [["a", "b"]]}', "other than numbers"),
    "empty batch": (b'{"instances": []}', "batch is empty"),
    "not a list of series": (b'{"instances": [1, 2, 3]}', "is not a list"),
}


@pytest.mark.parametrize("case", sorted(V1_BAD_INPUTS))
def test_v1_bad_input_is_a_400_with_protocol_error(server, case):
    body, expected = V1_BAD_INPUTS[case]
    status, result = post(server, f"/v1/models/{MODEL_NAME}:predict", body)
    assert status == 400, result
    assert expected in result["error"]


def test_grpc_bad_input_is_invalid_argument(server, window, min_history):
    client = grpcclient.InferenceServerClient(server.grpc_host)
    inp = grpcclient.InferInput("history", [1, 10], "FP32")
    inp.set_data_from_numpy(np.ones((1, 10), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL_NAME, [inp])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"at least {min_history} points" in err.value.message()
    wrong_type = grpcclient.InferInput("history", [1, window], "INT32")
    wrong_type.set_data_from_numpy(np.ones((1, window), dtype=np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL_NAME, [wrong_type])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live()


def test_health_answers_while_a_large_batch_is_forecast(server, window):
    """The forecast runs off the event loop: liveness keeps answering during a long request."""
    data = histories(20000, window)
    done = threading.Event()
    errors: list[BaseException] = []

    def big_request():
        try:
            triton_http(server, data, binary=True)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=big_request)
    worker.start()
    answered_during = 0
    while not done.is_set():
        status, _ = get(server, "/v2/health/live")
        assert status == 200
        if not done.is_set():
            answered_during += 1
        time.sleep(0.02)
    worker.join()
    assert not errors, errors
    assert answered_during >= 3, f"only {answered_during} health checks answered during the batch"


def post_raw(server, body: bytes, headers: dict, path: str = f"/v2/models/{MODEL_NAME}/infer") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(server.http_url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_v2_id_requested_outputs_and_mixed_binary(server, window, horizon):
    """The protocol's reply options: id echoed, only the requested outputs, binary per output."""
    data = histories(2, window, seed=4)
    header = json.dumps({
        "id": "req-42",
        "inputs": [{"name": "history", "datatype": "FP32", "shape": [2, window],
                    "parameters": {"binary_data_size": data.nbytes}}],
        "outputs": [{"name": "p90", "parameters": {"binary_data": True}}, {"name": "p10"}],
    }).encode()
    status, headers, body = post_raw(server, header + data.tobytes(),
                                     {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, body
    json_length = int(headers["inference-header-content-length"])
    reply = json.loads(body[:json_length])
    assert reply["id"] == "req-42" and [o["name"] for o in reply["outputs"]] == ["p90", "p10"]
    p90 = np.frombuffer(body[json_length:], dtype="<f4").reshape(2, horizon)
    p10 = np.array(reply["outputs"][1]["data"], dtype=np.float32).reshape(2, horizon)
    reference = triton_grpc(server, data)
    np.testing.assert_allclose(p90, reference["p90"], rtol=1e-6)
    np.testing.assert_allclose(p10, reference["p10"], rtol=1e-6)


BINARY_BAD = {
    "declared size differs from the bytes sent": (lambda w, raw: (raw[:-4], len(raw)), "bytes of binary data"),
    "size does not fit the shape": (lambda w, raw: (raw + raw[:4], len(raw) + 4), "needs"),
}


@pytest.mark.parametrize("case", sorted(BINARY_BAD))
def test_v2_binary_tensor_mistakes_are_400(server, window, case):
    make, expected = BINARY_BAD[case]
    raw, declared = make(window, histories(1, window).tobytes())
    header = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, window],
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    status, _, body = post_raw(server, header + raw, {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and expected in json.loads(body)["error"]


def test_v2_unknown_output_and_bad_binary_header_are_400(server, window):
    status, _, body = post_raw(server, v2_body(window)[:-1] + b', "outputs": [{"name": "p99"}]}',
                               {"Content-Type": "application/json"})
    assert status == 400 and "unknown output 'p99'" in json.loads(body)["error"]
    status, _, body = post_raw(server, v2_body(window), {"Inference-Header-Content-Length": "ten"})
    assert status == 400 and "must be an integer" in json.loads(body)["error"]
    status, _, body = post_raw(server, v2_body(window), {"Inference-Header-Content-Length": "999999"})
    assert status == 400 and "does not fit" in json.loads(body)["error"]


def test_grpc_requested_outputs_fp64_and_unknown_output(server, window, horizon):
    client = grpcclient.InferenceServerClient(server.grpc_host)
    data = histories(2, window, seed=8)
    tensor = grpcclient.InferInput("history", [2, window], "FP64")
    tensor.set_data_from_numpy(data.astype(np.float64))
    result = client.infer(MODEL_NAME, [tensor], outputs=[grpcclient.InferRequestedOutput("p90")])
    assert [o.name for o in result.get_response().outputs] == ["p90"]
    np.testing.assert_allclose(result.as_numpy("p90"), triton_grpc(server, data)["p90"], rtol=1e-5)
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL_NAME, [tensor], outputs=[grpcclient.InferRequestedOutput("p99")])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "unknown output 'p99'" in err.value.message()


@pytest.mark.parametrize("event_loop, uses_uvloop", [("auto", True), ("uvloop", True), ("asyncio", False)])
def test_a_single_process_runs_on_uvloop_unless_told_asyncio(event_loop, uses_uvloop):
    """KServe runs a single process on the default asyncio loop whatever --event-loop says."""
    import asyncio

    import uvloop

    from predictor.__main__ import use_uvloop

    try:
        use_uvloop(event_loop)
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy) is uses_uvloop
    finally:
        asyncio.set_event_loop_policy(None)
