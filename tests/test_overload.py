"""Overload (predictor/admission.py): a process holds at most --max_requests_held inference requests;
one past it is refused at once, REST 503 with Retry-After and gRPC UNAVAILABLE, counted apart from the
5xx the error-ratio alert watches. benchmarks/overload.py measures it at 4x capacity."""
from __future__ import annotations

import json
import threading
import time

import pytest
from tritonclient.utils import InferenceServerException

from .conftest import MODEL_NAME, start_server, stop_server, wait_ready
from .test_grpc_front import infer
from .test_metrics import scrape, value, wait_for_count
from .test_serving import card, histories, post_raw, window  # noqa: F401 (fixtures)
from .test_timeseries_api import forecast_request


def v2_body(window: int) -> bytes:
    data = histories(1, window)
    return json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": list(data.shape),
                                   "data": data.ravel().tolist()}]}).encode()


@pytest.mark.parametrize("front", ["native", "kserve"])
def test_a_request_past_the_bound_is_refused_at_once(model_dir, tmp_path, window, card, front):
    # one place; every batch is held 1 s, so the first request holds it while the others arrive
    srv = start_server(model_dir, tmp_path / "server.log", "--max_requests_held", "1", "--max_batch_delay_ms", "1000",
                       "--grpc_front", front)
    try:
        wait_ready(srv)
        body, headers = v2_body(window), {"Content-Type": "application/json"}
        before = scrape(srv)
        first: list = []
        holder = threading.Thread(target=lambda: first.append(post_raw(srv, body, headers)))
        holder.start()
        deadline = time.monotonic() + 10
        while value(scrape(srv), "perf_predictor_requests_in_flight", protocol="rest") < 1:
            assert time.monotonic() < deadline, "the first request never arrived"
            time.sleep(0.02)
        time.sleep(0.1)  # its body read and its place taken

        started = time.perf_counter()
        status, reply_headers, reply = post_raw(srv, body, headers)
        refused_in = time.perf_counter() - started
        assert status == 503, reply
        assert reply_headers.get("retry-after") == "1"
        assert "at capacity (1 requests in progress" in json.loads(reply)["error"]
        assert refused_in < 0.5, f"refused after {refused_in:.3f}s: it waited for the held request"

        # KServe's routes (v1, versioned v2) and the time-series API hold places too
        data = histories(1, window)
        for path, other in ((f"/v1/models/{MODEL_NAME}:predict", json.dumps({"instances": data.tolist()}).encode()),
                            (f"/v2/models/{MODEL_NAME}/versions/{card['version']}/infer", body),
                            ("/v1/timeseries/forecast", forecast_request(data, 1).model_dump_json().encode())):
            status, reply_headers, reply = post_raw(srv, other, headers, path)
            assert (status, reply_headers.get("retry-after")) == (503, "1"), (path, reply)
            assert "at capacity" in reply.decode(), path

        with pytest.raises(InferenceServerException) as refused:
            infer(srv, histories(1, window))
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "at capacity" in refused.value.message()

        holder.join(timeout=30)
        assert first and first[0][0] == 200, first
        assert post_raw(srv, body, headers)[0] == 200  # the place is free again
        assert infer(srv, histories(1, window)).as_numpy("p50").shape[0] == 1

        # a call is counted just after its reply is written
        successes = wait_for_count(lambda: value(scrape(srv), "perf_predictor_requests_total", model=MODEL_NAME,
                                                 status_class="2xx"), 3)
        assert successes == 3
        after = scrape(srv)
        for protocol, expected in (("rest", 3), ("timeseries", 1), ("grpc", 1)):
            refused_count = [value(s, "perf_predictor_rejected_total", protocol=protocol, reason="overload")
                             for s in (before, after)]
            assert refused_count[1] - refused_count[0] == expected, protocol
        # not server errors: load alone must not fire PerfPredictorHighErrorRatio
        assert value(after, "perf_predictor_requests_total", status_class="5xx") == \
            value(before, "perf_predictor_requests_total", status_class="5xx")
    finally:
        stop_server(srv)
