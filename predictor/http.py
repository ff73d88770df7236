"""Fixes to KServe's REST layer so that clients get the protocol's 4xx errors, not 415/422/500s.

- A v1 or v2 inference body without a JSON Content-Type (curl's default is form-encoded) is JSON unless the
  binary-tensor header says otherwise; KServe 0.21 would treat it as binary and fail.
- FastAPI's request validation errors (malformed v2 JSON) become 400 {"error": ...} instead of 422.
"""
from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import model_server

BINARY_HEADER = b"inference-header-content-length"
JSON_TYPE = b"application/json"
INFER_SUFFIXES = ("/infer", ":predict")
_installed = False


class JsonContentTypeMiddleware:
    """ASGI middleware: inference POSTs (v1 :predict, v2 /infer) without the binary header are read as JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] == "http" and scope["method"] == "POST" and path.endswith(INFER_SUFFIXES):
            headers = [(k, v) for k, v in scope["headers"]]
            names = {k for k, _ in headers}
            if BINARY_HEADER not in names:
                headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", JSON_TYPE)]
                scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


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
    return JSONResponse(status_code=400, content={"error": _describe(exc)})


def install() -> None:
    """Idempotent; must run in every process that serves REST (see PerfPredictor.__setstate__)."""
    global _installed
    if _installed:
        return
    model_server.app.add_middleware(JsonContentTypeMiddleware)
    model_server.app.add_exception_handler(RequestValidationError, validation_error_handler)
    _installed = True
