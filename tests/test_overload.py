"""Overload (predictor/admission.py): a process holds at most --max_requests_held inference requests;
one past it is refused at once, REST 503 with Retry-After and gRPC UNAVAILABLE, counted apart from the
5xx the error-ratio alert watches. benchmarks/overload.py measures it at 4x capacity."""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from .conftest import MODEL_NAME, start_server, stop_server, wait_ready
from .test_auth import TOKEN_A, bearer, write_tokens
from .test_grpc_front import infer
from .test_metrics import scrape, value, wait_for_count, wait_for_workers
from .test_serving import card, histories, post_raw, window  # noqa: F401 (fixtures)
from .test_timeseries_api import forecast_request


def v2_body(window: int) -> bytes:
    data = histories(1, window)
    return json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": list(data.shape),
                                   "data": data.ravel().tolist()}]}).encode()


NOT_A_MESSAGE = b"\xff\xff\xff\xff"  # no ModelInferRequest parses from it


def raw_model_infer(srv, message: bytes) -> tuple[grpc.StatusCode, str]:
    """ModelInfer with `message` as its bytes, as they are: the status and its details."""
    with grpc.insecure_channel(srv.grpc_host) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=bytes,
                                   response_deserializer=bytes)
        try:
            call(message, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def hold_the_place(srv, body: bytes, headers: tuple = ()) -> tuple[threading.Thread, list]:
    """A request that takes the server's one place (its batch held by --max_batch_delay_ms); its reply
    lands in the list once the thread ends."""
    first: list = []
    holder = threading.Thread(target=lambda: first.append(post_raw(srv, body, {"Content-Type": "application/json",
                                                                               **dict(headers)})))
    holder.start()
    deadline = time.monotonic() + 10
    while value(scrape(srv), "perf_predictor_requests_in_flight", protocol="rest") < 1:
        assert time.monotonic() < deadline, "the first request never arrived"
        time.sleep(0.02)
    time.sleep(0.1)  # its body read and its place taken
    return holder, first


@pytest.mark.parametrize("front", ["native", "kserve"])
def test_a_request_past_the_bound_is_refused_at_once(model_dir, tmp_path, window, card, front):
    # one place; every batch is held 1 s, so the first request holds it while the others arrive
    srv = start_server(model_dir, tmp_path / "server.log", "--max_requests_held", "1", "--max_batch_delay_ms", "1000",
                       "--grpc_front", front)
    try:
        wait_ready(srv)
        body, headers = v2_body(window), {"Content-Type": "application/json"}
        before = scrape(srv)
        assert value(before, "perf_predictor_requests_held_bound", model=MODEL_NAME) == 1
        holder, first = hold_the_place(srv, body)

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
        if front == "native":  # refused before its message is read, as REST refuses on the path
            code, details = raw_model_infer(srv, NOT_A_MESSAGE)
            assert (code, "at capacity" in details) == (grpc.StatusCode.UNAVAILABLE, True), details

        holder.join(timeout=30)
        assert first and first[0][0] == 200, first
        assert post_raw(srv, body, headers)[0] == 200  # the place is free again
        assert infer(srv, histories(1, window)).as_numpy("p50").shape[0] == 1
        if front == "native":  # with a place free, the same message is read, and refused for what it is
            assert raw_model_infer(srv, NOT_A_MESSAGE)[0] == grpc.StatusCode.INVALID_ARGUMENT

        # a call is counted just after its reply is written
        successes = wait_for_count(lambda: value(scrape(srv), "perf_predictor_requests_total", model=MODEL_NAME,
                                                 status_class="2xx"), 3)
        assert successes == 3
        after = scrape(srv)
        for protocol, expected in (("rest", 3), ("timeseries", 1), ("grpc", 2 if front == "native" else 1)):
            refused_count = [value(s, "perf_predictor_rejected_total", protocol=protocol, reason="overload")
                             for s in (before, after)]
            assert refused_count[1] - refused_count[0] == expected, protocol
        # not server errors: load alone must not fire PerfPredictorHighErrorRatio
        assert value(after, "perf_predictor_requests_total", status_class="5xx") == \
            value(before, "perf_predictor_requests_total", status_class="5xx")
    finally:
        stop_server(srv)


def request_head(path: str, length: int, *extra: str) -> bytes:
    return "".join([f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n",
                    f"content-length: {length}\r\n", *(f"{h}\r\n" for h in extra), "\r\n"]).encode()


def read_reply(reader) -> tuple[int, dict, bytes]:
    status = int(reader.readline().split(b" ", 2)[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers["content-length"]))


def test_the_connection_refuses_on_the_headers_and_serves_the_next_request(model_dir, tmp_path, window, card):
    # the request past the bound is answered by the connection (predictor/connections.py) as soon as its
    # headers are in: its 503 arrives before a byte of its body is sent, the body is then dropped, and the
    # requests that follow on the same keep-alive connection (pipelined in the same write) are served
    srv = start_server(model_dir, tmp_path / "server.log", "--max_requests_held", "1", "--max_batch_delay_ms", "3000")
    try:
        wait_ready(srv)
        body, data = v2_body(window), histories(1, window)
        forecast = forecast_request(data, 1).model_dump_json().encode()
        v1 = json.dumps({"instances": data.tolist()}).encode()
        before = scrape(srv)
        holder, first = hold_the_place(srv, body)

        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=20) as sock:
            reader = sock.makefile("rb")
            sock.sendall(request_head(f"/v2/models/{MODEL_NAME}/infer", len(body)))
            status, headers, reply = read_reply(reader)  # no body sent yet
            assert (status, headers.get("retry-after")) == (503, "1"), reply
            assert "connection" not in headers  # kept alive
            assert "at capacity (1 requests in progress" in json.loads(reply)["error"]

            # its body, then health (never refused) and a request pipelined behind it: the connection leaves
            # that one to the application (replies stay in order), which refuses it as well
            sock.sendall(body + b"GET /v2/health/ready HTTP/1.1\r\nhost: localhost\r\n\r\n"
                         + request_head(f"/v2/models/{MODEL_NAME}/versions/{card['version']}/infer", len(body)) + body)
            assert read_reply(reader)[0] == 200
            status, headers, reply = read_reply(reader)
            assert (status, headers.get("retry-after")) == (503, "1"), reply

            sock.sendall(request_head("/v1/timeseries/forecast", len(forecast)))
            status, headers, reply = read_reply(reader)  # before the forecast's body is sent
            assert (status, headers.get("retry-after")) == (503, "1"), reply
            error = json.loads(reply)["error"]  # KServe's ErrorResponse, as the API answers it
            assert (error["type"], error["code"]) == ("overload", "503") and "at capacity" in error["message"]

            # a client that closes after this request: 503, Connection: close, once its body has been read
            sock.sendall(forecast + request_head(f"/v1/models/{MODEL_NAME}:predict", len(v1), "connection: close") + v1)
            status, headers, reply = read_reply(reader)
            assert (status, headers.get("retry-after"), headers.get("connection")) == (503, "1", "close"), reply
            assert reader.read() == b""  # closed

        holder.join(timeout=30)
        assert first and first[0][0] == 200, first
        assert post_raw(srv, body, {"Content-Type": "application/json"})[0] == 200  # the place is free again
        after = scrape(srv)
        for protocol, expected in (("rest", 3), ("timeseries", 1)):
            refused_count = [value(s, "perf_predictor_rejected_total", protocol=protocol, reason="overload")
                             for s in (before, after)]
            assert refused_count[1] - refused_count[0] == expected, protocol
        assert value(after, "perf_predictor_requests_total", status_class="5xx") == \
            value(before, "perf_predictor_requests_total", status_class="5xx")
        assert "Invalid HTTP request" not in srv.log()  # no body was taken for a request
    finally:
        stop_server(srv)


def test_every_worker_process_refuses_on_its_connections(model_dir, tmp_path, window):
    # --workers 2: each worker has its own bound (the model is pickled into it with a new Admission)
    # and its own connections' refusal (rest.install runs in each); both full, a time-series forecast's
    # headers get their 503 before its body is sent, whichever worker takes the connection
    srv = start_server(model_dir, tmp_path / "server.log", "--workers", "2", "--max_requests_held", "1",
                       "--max_batch_delay_ms", "15000")
    try:
        wait_ready(srv)
        wait_for_workers(srv, 2, 120)
        # each worker's own bound, summed over the live processes
        assert wait_for_count(lambda: value(scrape(srv), "perf_predictor_requests_held_bound", model=MODEL_NAME), 2) == 2
        body = v2_body(window)
        forecast = forecast_request(histories(1, window), 1).model_dump_json().encode()
        before = scrape(srv)
        holders, replies = [], []
        deadline = time.monotonic() + 60
        while value(scrape(srv), "perf_predictor_requests_in_flight", protocol="rest") < 2:
            assert time.monotonic() < deadline, "two requests were never held at once"
            # one more request: held if it lands on the worker with a free place, else refused at once
            holder = threading.Thread(target=lambda: replies.append(post_raw(srv, body, {"Content-Type": "application/json"})))
            holder.start()
            holders.append(holder)
            time.sleep(0.3)
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", srv.http_port), timeout=20) as sock:
                sock.sendall(request_head("/v1/timeseries/forecast", len(forecast)))
                status, headers, reply = read_reply(sock.makefile("rb"))
                assert (status, headers.get("retry-after")) == (503, "1"), reply
        for holder in holders:
            holder.join(timeout=60)
        assert sorted({status for status, _, _ in replies}) in ([200], [200, 503]), replies
        refused = wait_for_count(lambda: value(scrape(srv), "perf_predictor_rejected_total", protocol="timeseries",
                                               reason="overload") - value(before, "perf_predictor_rejected_total",
                                                                          protocol="timeseries", reason="overload"), 6)
        assert refused == 6
    finally:
        stop_server(srv)


def test_authentication_comes_before_the_overload_refusal(model_dir, tmp_path, window):
    # the connection's refusal leaves a call without a valid token to the application, which answers 401
    tokens = tmp_path / "tokens"
    write_tokens(tokens, TOKEN_A)
    srv = start_server(model_dir, tmp_path / "server.log", "--max_requests_held", "1", "--max_batch_delay_ms", "3000",
                       "--auth_token_file", str(tokens))
    try:
        wait_ready(srv)
        body = v2_body(window)
        holder, first = hold_the_place(srv, body, tuple(bearer(TOKEN_A).items()))
        path = f"/v2/models/{MODEL_NAME}/infer"
        for extra, expected in (((), 401), (("authorization: Bearer tok-wrong-" + "x" * 22,), 401),
                                ((f"authorization: Bearer {TOKEN_A}",), 503)):
            with socket.create_connection(("127.0.0.1", srv.http_port), timeout=20) as sock:
                sock.sendall(request_head(path, len(body), *extra))  # answered before the body
                status, headers, reply = read_reply(sock.makefile("rb"))
                assert status == expected, (extra, reply)
        holder.join(timeout=30)
        assert first and first[0][0] == 200, first
    finally:
        stop_server(srv)


def test_the_forecast_thread_runs_at_the_cpu_priority_the_operator_gives(model_dir, tmp_path, window):
    # --forecast_nice reaches the thread that predicts (batching.py): every batch goes to it here
    # (--inline_max_series 0), and its nice value is read from the kernel; every other thread keeps the loop's
    srv = start_server(model_dir, tmp_path / "server.log", "--forecast_nice", "4", "--inline_max_series", "0")
    try:
        wait_ready(srv)
        status, _, reply = post_raw(srv, v2_body(window), {"Content-Type": "application/json"})
        assert status == 200, reply
        pid = srv.process.pid
        loop_nice = os.getpriority(os.PRIO_PROCESS, pid)
        nices = [os.getpriority(os.PRIO_PROCESS, int(task)) for task in os.listdir(f"/proc/{pid}/task")]
        assert set(nices) == {loop_nice, loop_nice + 4} and nices.count(loop_nice + 4) == 1
    finally:
        stop_server(srv)


def test_the_heap_built_before_serving_is_out_of_the_cyclic_collector():
    """A serving process freezes what it built before its first request (rest.RESTServer.create_application,
    called in every serving process): a full collection over it stopped the event loop for a tenth of a
    second at a time under load. Built here as KServe's ModelServer builds it, in a process of its own."""
    import subprocess
    import sys

    script = (
        "import gc\n"
        "from kserve.model_repository import ModelRepository\n"
        "from kserve.protocol.dataplane import DataPlane\n"
        "from kserve.protocol.model_repository_extension import ModelRepositoryExtension\n"
        "from predictor import rest\n"
        "repo = ModelRepository()\n"
        "server = rest.RESTServer('kserve.model_server:app', DataPlane(model_registry=repo),\n"
        "                         ModelRepositoryExtension(model_registry=repo), 0)\n"
        "before = len(gc.get_objects())\n"
        "server.create_application()\n"
        "print(before, gc.get_freeze_count(), len(gc.get_objects()))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    before, frozen, tracked = map(int, run.stdout.split())
    assert frozen >= before > 10_000  # the imports alone are tens of thousands of objects
    assert tracked < 100  # what a full collection still walks
