"""KServe's time-series forecast API on the real server, with requests built from KServe's own types.

The semantics checked here are those of KServe's TimesFM runtime, kserve/kserve
python/huggingfaceserver/huggingfaceserver/time_series_model.py (`_forecast_timesfm`): horizon at most
the model's, quantiles a subset of the trained ones, one output per input, and the forecast's
start_timestamp the input's advanced by len(series) steps.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from .conftest import MODEL_NAME
from .test_metrics import scrape, value
from .test_serving import histories, post


def kserve_timeseries_types():
    """KServe's own kserve/protocol/rest/timeseries/types.py (pydantic only), loaded by itself: importing
    the kserve package loads its v2 protos, which cannot share a process with tritonclient.grpc's."""
    package = importlib.util.find_spec("kserve")  # found, not imported
    path = Path(package.submodule_search_locations[0]) / "protocol" / "rest" / "timeseries" / "types.py"
    spec = importlib.util.spec_from_file_location("kserve_timeseries_types", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the postponed annotations through it
    spec.loader.exec_module(module)
    return module


_types = kserve_timeseries_types()
ErrorResponse, ForecastOptions, ForecastRequest = _types.ErrorResponse, _types.ForecastOptions, _types.ForecastRequest
ForecastResponse, Frequency, Status = _types.ForecastResponse, _types.Frequency, _types.Status
TimeSeriesInput, TimeSeriesType = _types.TimeSeriesInput, _types.TimeSeriesType

START = "2026-01-31T22:00:00Z"
TS = {"protocol": "timeseries"}


@pytest.fixture(scope="module")
def card(model_dir) -> dict:
    from forecaster import artifact
    return artifact.read_card(model_dir)


def series_input(name: str, values: np.ndarray, frequency: Frequency = Frequency.MINUTE, step: Optional[int] = 5,
                 start: Optional[str] = START) -> TimeSeriesInput:
    extra = {} if step is None else {"step": step}
    return TimeSeriesInput(type=TimeSeriesType.UNIVARIATE, name=name, series=[float(v) for v in values],
                           frequency=frequency, start_timestamp=start, **extra)


def forecast_request(history: np.ndarray, horizon: int, quantiles: Optional[list[float]] = None,
                     **input_options) -> ForecastRequest:
    inputs = [series_input(f"series-{i}", row, **input_options) for i, row in enumerate(history)]
    return ForecastRequest(model=MODEL_NAME, inputs=inputs, options=ForecastOptions(horizon=horizon, quantiles=quantiles))


def send(server, body: bytes | str, method: str = "POST", path: str = "/v1/timeseries/forecast") -> tuple[int, bytes, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(server.http_url + path, data=data if method == "POST" else None, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def forecast(server, request: ForecastRequest) -> ForecastResponse:
    status, body, _ = send(server, request.model_dump_json())
    assert status == 200, body
    return ForecastResponse.model_validate_json(body)


def v2_forecast(server, history: np.ndarray) -> dict[str, np.ndarray]:
    body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": list(history.shape),
                                   "data": history.ravel().tolist()}]}).encode()
    status, reply = post(server, f"/v2/models/{MODEL_NAME}/infer", body)
    assert status == 200, reply
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in reply["outputs"]}


def test_forecasts_equal_v2_for_the_same_windows(server, card):
    window, horizon = card["window"], card["horizon"]
    history = histories(5, window + 40, seed=3)  # longer than W: both protocols use the last W points
    response = forecast(server, forecast_request(history, horizon))
    v2 = v2_forecast(server, history)
    assert response.status == Status.COMPLETED and response.model == MODEL_NAME
    assert len(response.outputs) == len(history)  # one output per input, as KServe's runtime answers
    for i, output in enumerate(response.outputs):
        assert output.type == "time_series_forecast" and output.status == Status.COMPLETED
        (content,) = output.content
        assert content.name == f"series-{i}" and content.type == TimeSeriesType.UNIVARIATE
        assert content.frequency == Frequency.MINUTE
        np.testing.assert_array_equal(np.float32(content.mean_forecast), v2["p50"][i])
        assert sorted(content.quantiles) == ["0.1", "0.5", "0.9"]  # omitted: every trained quantile
        for q, name in (("0.1", "p10"), ("0.5", "p50"), ("0.9", "p90")):
            np.testing.assert_array_equal(np.float32(content.quantiles[q]), v2[name][i])
    assert len({o.id for o in response.outputs} | {response.id}) == len(history) + 1


def test_horizon_and_quantiles_pick_from_the_full_forecast(server, card):
    history = histories(2, card["window"], seed=4)
    full = v2_forecast(server, history)
    response = forecast(server, forecast_request(history, horizon=4, quantiles=[0.9, 0.1]))
    for i, output in enumerate(response.outputs):
        content = output.content[0]
        assert list(content.quantiles) == ["0.9", "0.1"]  # keyed as asked, like KServe's str(q)
        np.testing.assert_array_equal(np.float32(content.quantiles["0.9"]), full["p90"][i, :4])
        np.testing.assert_array_equal(np.float32(content.quantiles["0.1"]), full["p10"][i, :4])
        np.testing.assert_array_equal(np.float32(content.mean_forecast), full["p50"][i, :4])


def test_start_timestamp_advances_by_the_series_length_at_its_step(server, card):
    window = card["window"]
    assert card["step_seconds"] == 300
    history = histories(1, window + 4, seed=5)[0]
    cases = [  # (frequency, step, input start, expected forecast start): len = W + 4 points of 5 minutes
        (Frequency.MINUTE, 5, "2026-01-31T22:00:00Z", (window + 4) * 300),
        (Frequency.MINUTE_SHORT, 5, "2026-01-31T22:00:00Z", (window + 4) * 300),
        (Frequency.SECOND, 300, "2026-01-31T22:00:00Z", (window + 4) * 300),
        (Frequency.SECOND_SHORT, 300, "2026-01-31T22:00:00.250+02:00", (window + 4) * 300),
    ]
    forecasts = []
    for frequency, step, start, advance in cases:
        request = ForecastRequest(model=MODEL_NAME, inputs=[series_input("cpu", history, frequency, step, start)],
                                  options=ForecastOptions(horizon=2))
        content = forecast(server, request).outputs[0].content[0]
        expected = datetime.fromisoformat(start) + timedelta(seconds=advance)
        assert datetime.fromisoformat(content.start_timestamp) == expected
        assert content.start_timestamp.endswith("Z") == start.endswith("Z")
        assert content.frequency == frequency
        forecasts.append(content.mean_forecast)
    assert all(f == forecasts[0] for f in forecasts)  # the same series, however its step is spelled
    # 344 points of 5 minutes from 22:00 on Jan 31 span 28h40m: the forecast starts on Feb 2 at 02:40
    request = ForecastRequest(model=MODEL_NAME, inputs=[series_input("cpu", histories(1, max(344, window))[0][-344:])],
                              options=ForecastOptions(horizon=1))
    if window <= 344:
        assert forecast(server, request).outputs[0].content[0].start_timestamp == "2026-02-02T02:40:00Z"


def test_models_lists_the_served_model_and_its_contract(server, card):
    status, body, _ = send(server, b"", method="GET", path="/v1/timeseries/models")
    assert status == 200 and json.loads(body) == [MODEL_NAME]  # KServe's shape: a list of names
    status, body, _ = send(server, b"", method="GET", path=f"/v1/timeseries/models/{MODEL_NAME}")
    assert status == 200
    assert json.loads(body) == {"name": MODEL_NAME, "version": card["version"], "frequency": "minute", "step": 5,
                                "step_seconds": 300, "min_history": card["min_history"], "max_horizon": card["horizon"],
                                "quantiles": card["quantiles"]}


def wait_for(server, check, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"{what} not counted within {timeout}s"
        time.sleep(0.1)


def test_many_series_are_one_batch_with_the_v2_metrics(server, card):
    before = scrape(server)
    count = lambda s, name, **labels: value(s, name, model=MODEL_NAME, **labels)  # noqa: E731
    history = histories(7, card["window"], seed=6)
    forecast(server, forecast_request(history, card["horizon"]))
    after = wait_for(server, lambda s: count(s, "perf_predictor_requests_total", status_class="2xx", **TS)
                     > count(before, "perf_predictor_requests_total", status_class="2xx", **TS), "the request")
    delta = lambda name, **labels: count(after, name, **labels) - count(before, name, **labels)  # noqa: E731
    assert delta("perf_predictor_requests_total", status_class="2xx", endpoint="forecast", **TS) == 1
    assert delta("perf_predictor_batch_size_count", **TS) == 1 and delta("perf_predictor_batch_size_sum", **TS) == 7
    assert delta("perf_predictor_series_forecast_total", **TS) == 7
    assert delta("perf_predictor_predict_batch_series_count") == 1  # one predict call for all 7 series
    assert delta("perf_predictor_predict_batch_series_sum") == 7
    assert delta("perf_predictor_request_duration_seconds_count", **TS) == 1
    assert count(after, "perf_predictor_requests_in_flight", **TS) == 0
    assert value(after, "request_predict_seconds_count") > value(before, "request_predict_seconds_count")


def _parent(doc: dict, path: str) -> tuple[Any, Any]:
    """("inputs.0.series") -> (doc["inputs"][0], "series")."""
    *parents, last = (int(p) if p.isdigit() else p for p in path.split("."))
    for key in parents:
        doc = doc[key]
    return doc, last


def _drop(path: str):
    def edit(doc: dict) -> None:
        target, key = _parent(doc, path)
        del target[key]
    return edit


def _set(path: str, new):
    """`new`: the value, or a function of the old one."""
    def edit(doc: dict) -> None:
        target, key = _parent(doc, path)
        target[key] = new(target[key]) if callable(new) else new
    return edit


def _nan_in_window(doc: dict) -> None:
    doc["inputs"][1]["series"][-3] = float("nan")


# (id, edit of a valid request's JSON document, or a raw body; status; ErrorResponse type; param; metrics model)
ERRORS = [
    ("malformed-json", b'{"model": "perf-predictor", "inputs": [', 400, "malformed_body", None, "unknown"),
    ("not-an-object", b"[1, 2, 3]", 400, "malformed_body", None, "unknown"),
    ("missing-model", _drop("model"), 400, "missing_field", "model", "unknown"),
    ("missing-options", _drop("options"), 400, "missing_field", "options", MODEL_NAME),
    ("missing-horizon", _drop("options.horizon"), 400, "missing_field", "options.horizon", MODEL_NAME),
    ("missing-series", _drop("inputs.0.series"), 400, "missing_field", "inputs[0].series", MODEL_NAME),
    ("missing-start", _set("inputs.0.start_timestamp", None), 400, "missing_field", "inputs[0].start_timestamp",
     MODEL_NAME),
    ("unknown-model", _set("model", "google/timesfm-2.0-500m-pytorch"), 404, "unknown_model", "model", "unknown"),
    ("horizon-too-long", _set("options.horizon", 10_000), 400, "invalid_horizon", "options.horizon",
     MODEL_NAME),
    ("horizon-zero", _set("options.horizon", 0), 400, "invalid_horizon", "options.horizon", MODEL_NAME),
    ("horizon-not-int", _set("options.horizon", "twelve"), 400, "invalid_field", "options.horizon", MODEL_NAME),
    ("untrained-quantile", _set("options.quantiles", [0.1, 0.25]), 400, "invalid_quantile", "options.quantiles",
     MODEL_NAME),
    ("no-inputs", _set("inputs", []), 400, "empty_batch", "inputs", MODEL_NAME),
    ("multivariate", _set("inputs.0.type", "multivariate_time_series"), 400, "unsupported_time_series_type",
     "inputs[0].type", MODEL_NAME),
    ("univariate-nested", _set("inputs.0.series", lambda s: [[v, v] for v in s]), 400, "invalid_series",
     "inputs[0].series", MODEL_NAME),
    ("series-of-strings", _set("inputs.0.series", lambda s: ["high"] * len(s)), 400, "invalid_series",
     "inputs[0].series", MODEL_NAME),
    ("too-short", _set("inputs.1.series", lambda s: s[:10]), 400, "too_short", "inputs[1].series", MODEL_NAME),
    ("nan", _nan_in_window, 400, "non_finite", "inputs[1].series", MODEL_NAME),
    ("null-gap", _set("inputs.0.series.5", None), 400, "non_finite", "inputs[0].series", MODEL_NAME),
    ("bad-timestamp", _set("inputs.0.start_timestamp", "last tuesday"), 400, "invalid_timestamp",
     "inputs[0].start_timestamp", MODEL_NAME),
    ("timestamp-overflow", _set("inputs.0.start_timestamp", "9999-12-31T23:00:00Z"), 400, "invalid_timestamp",
     "inputs[0].start_timestamp", MODEL_NAME),
    ("unknown-frequency", _set("inputs.0.frequency", "fortnight"), 400, "invalid_frequency", "inputs[0].frequency",
     MODEL_NAME),
    ("wrong-step", _set("inputs.0.step", 1), 400, "invalid_frequency", "inputs[0].frequency", MODEL_NAME),
    ("step-omitted", _drop("inputs.0.step"), 400, "invalid_frequency", "inputs[0].frequency", MODEL_NAME),
    ("hourly-series", _set("inputs.0.frequency", "hour"), 400, "invalid_frequency", "inputs[0].frequency", MODEL_NAME),
    ("monthly-series", _set("inputs.0.frequency", "M"), 400, "invalid_frequency", "inputs[0].frequency", MODEL_NAME),
    ("step-not-int", _set("inputs.0.step", "5"), 400, "invalid_frequency", "inputs[0].step", MODEL_NAME),
    ("step-negative", _set("inputs.0.step", -5), 400, "invalid_frequency", "inputs[0].step", MODEL_NAME),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_error_matrix_is_4xx_error_responses_counted_as_client_errors(server, card, case):
    _, edit, status, error_type, param, metrics_model = case
    if isinstance(edit, bytes):
        body = edit
    else:
        document = forecast_request(histories(2, card["window"] + 3, seed=7), card["horizon"]).model_dump(mode="json")
        edit(document)
        body = json.dumps(document).encode()  # json.dumps writes NaN as NaN, as Python clients do
    before = scrape(server)
    got, reply, _ = send(server, body)
    assert got == status, reply
    error = ErrorResponse.model_validate_json(reply).error
    assert (error.type, error.param, error.code) == (error_type, param, str(status)), error
    assert error.message
    labels = {"model": metrics_model, "reason": error_type, **TS}
    wait_for(server, lambda s: value(s, "perf_predictor_client_errors_total", **labels)
             == value(before, "perf_predictor_client_errors_total", **labels) + 1, f"client error {labels}")
    after = scrape(server)
    assert value(after, "perf_predictor_requests_total", status_class="4xx", endpoint="forecast", **TS) \
        == value(before, "perf_predictor_requests_total", status_class="4xx", endpoint="forecast", **TS) + 1


def test_kserve_timesfm_request_needs_only_the_step(server, card):
    """A request as a client builds it for KServe's TimesFM runtime ("frequency": "T", no step) is refused
    with a message that says what to send; adding the step is all it takes."""
    history = histories(1, card["window"], seed=8)
    request = forecast_request(history, 3, step=None, frequency=Frequency.MINUTE_SHORT)
    status, reply, _ = send(server, request.model_dump_json())
    error = ErrorResponse.model_validate_json(reply).error
    assert status == 400 and error.type == "invalid_frequency"
    assert '"frequency": "minute", "step": 5' in error.message
    fixed = forecast_request(history, 3, step=5, frequency=Frequency.MINUTE_SHORT)
    np.testing.assert_array_equal(np.float32(forecast(server, fixed).outputs[0].content[0].mean_forecast),
                                  v2_forecast(server, history)["p50"][0, :3])


@pytest.mark.parametrize("method,path,status,allow", [
    ("GET", "/v1/timeseries/forecast", 405, "POST"),
    ("POST", "/v1/timeseries/models", 405, "GET"),
    ("GET", "/v1/timeseries/models/timesfm", 404, None),
    ("GET", "/v1/timeseries/predict", 404, None),
])
def test_routes_answer_in_the_error_shape(server, method, path, status, allow):
    got, reply, headers = send(server, b"{}", method=method, path=path)
    assert got == status
    assert ErrorResponse.model_validate_json(reply).error.code == str(status)
    assert headers.get("allow") == allow


def test_the_server_stays_up_after_the_error_matrix(server, card):
    history = histories(1, card["window"], seed=9)
    response = forecast(server, forecast_request(history, 1))
    assert response.outputs[0].content[0].mean_forecast == [float(v2_forecast(server, history)["p50"][0, 0])]
