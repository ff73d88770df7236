"""Additions to KServe's REST app: protocol-shaped 4xx errors, JSON by default, metrics for every request.

- A v1 or v2 inference body without a JSON Content-Type (curl's default is form-encoded) is read as
  JSON unless the binary-tensor header says otherwise; KServe 0.21 would treat it as binary and fail.
- FastAPI's request validation errors (malformed v2 JSON) become 400 {"error": ...} instead of 422.
- Every inference request is counted and timed outside KServe (here; our models' v2 infer requests in
  fastpath.py, with the same `tracked`), so requests KServe rejects before the model sees them are
  counted too; `/metrics` serves the sum over all worker processes.
- `read_body` reads an ASGI body whole, for the fast paths (fastpath.py, grpc_bridged.py).
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import model_server

from . import metrics

BINARY_HEADER = b"inference-header-content-length"
JSON_TYPE = b"application/json"
INFERENCE_PATH = re.compile(r"^/v2/models/(?P<v2>[^/]+)(?:/versions/[^/]+)?/infer$|^/v1/models/(?P<v1>[^/:]+):predict$")
FALLBACK_REASONS = {400: "invalid_request", 404: "unknown_model", 413: "too_large", 415: "unsupported_media_type"}

# Set by the metrics middleware for the request in progress; the model writes the 4xx reason into it.
request_state: ContextVar[Optional[dict]] = ContextVar("perf_predictor_request", default=None)
# name -> the model object serving it in this process (PerfPredictor registers itself)
SERVED: dict = {}
_installed = False


class JsonContentTypeMiddleware:
    """Inference POSTs without the binary-tensor header are read as JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and INFERENCE_PATH.match(scope["path"]):
            headers = list(scope["headers"])
            if all(k != BINARY_HEADER for k, _ in headers):
                headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", JSON_TYPE)]
                scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


class MetricsMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            body, content_type = metrics.exposition()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type.encode())]})
            return await send({"type": "http.response.body", "body": body})
        match = INFERENCE_PATH.match(scope["path"]) if scope["method"] == "POST" else None
        if not match:
            return await self.app(scope, receive, send)
        name = match.group("v2") or match.group("v1")
        model = name if name in SERVED else "unknown"  # no label per made-up path
        endpoint = "v2_infer" if match.group("v2") else "v1_predict"
        with tracked(model, "rest", endpoint) as state:
            token = request_state.set(state)

            async def capture_status(message):
                if message["type"] == "http.response.start":
                    state["status"] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, capture_status)
            finally:
                request_state.reset(token)


class InFlight:
    """One inference request from receipt to reply: in flight until `done`, then counted and timed
    with its status and 4xx reason (once, whoever calls `done` first)."""

    __slots__ = ("model", "protocol", "endpoint", "started", "gauge")

    def __init__(self, model: str, protocol: str, endpoint: str):
        self.model, self.protocol, self.endpoint = model, protocol, endpoint
        self.gauge = metrics.IN_FLIGHT.labels(model, protocol)
        self.gauge.inc()
        self.started = time.perf_counter()

    def done(self, status: int, reason: Optional[str] = None) -> None:
        if self.gauge is not None:
            self.gauge.dec()
            self.gauge = None
            record(self.model, self.protocol, self.endpoint, status, reason, time.perf_counter() - self.started)


@contextmanager
def tracked(model: str, protocol: str, endpoint: str) -> Iterator[dict]:
    """In flight while inside; then counted and timed with the status (500 unless the caller sets
    another) and the 4xx reason the caller leaves in the yielded dict."""
    state = {"status": 500, "reason": None}
    request = InFlight(model, protocol, endpoint)
    try:
        yield state
    finally:
        request.done(state["status"], state["reason"])


class BodyTooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(f"request body of more than {size} bytes")
        self.size = size


async def read_body(receive, max_bytes: Optional[int] = None) -> bytes:
    """An ASGI request's whole body; with `max_bytes`, BodyTooLarge as soon as more has arrived."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLarge(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def note_rejection(reason: Optional[str]) -> None:
    """Why the REST request in progress is being rejected, for the client-error counter."""
    state = request_state.get()
    if state is not None:
        state["reason"] = reason


def record(model: str, protocol: str, endpoint: str, status: int, reason: Optional[str], seconds: float) -> None:
    metrics.REQUESTS.labels(model, protocol, endpoint, metrics.status_class(status)).inc()
    metrics.DURATION.labels(model, protocol, endpoint).observe(seconds)
    if 400 <= status < 500:
        metrics.CLIENT_ERRORS.labels(model, protocol, reason or FALLBACK_REASONS.get(status, "other")).inc()


def _describe(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return "the body is not valid JSON"
    # The v2 body is typed "InferenceRequest or raw bytes": the bytes branch's complaint only confuses.
    errors = [e for e in errors if tuple(e.get("loc", ()))[:2] != ("body", "bytes")] or errors
    problems = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "malformed request body: " + "; ".join(problems)


async def validation_error_handler(_request, exc: RequestValidationError) -> JSONResponse:
    note_rejection("malformed_body")
    return JSONResponse(status_code=400, content={"error": _describe(exc)})


def install() -> None:
    """Idempotent; must run in every process that serves REST (see PerfPredictor.__setstate__)."""
    global _installed
    if _installed:
        return
    from . import fastpath

    # Starlette puts the last added outermost: metrics see everything, then content type. Our models'
    # v2 infer requests are answered before all of it, and counted there.
    fastpath.install(model_server.app)
    model_server.app.add_middleware(JsonContentTypeMiddleware)
    model_server.app.add_middleware(MetricsMiddleware)
    model_server.app.add_exception_handler(RequestValidationError, validation_error_handler)
    _installed = True
