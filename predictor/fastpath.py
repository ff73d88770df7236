"""The v2 REST inference endpoint of our models, served without FastAPI's per-number pydantic models.

KServe's route validates a v2 JSON body into pydantic objects one number at a time and encodes the
reply the same way; for a forecaster that answers in about a millisecond that is most of the cost.
This ASGI middleware answers POST /v2/models/<served model>/infer itself, JSON and binary tensors,
with the same checks and error bodies; every other route (health, metadata, v1, versions) stays
KServe's, and gRPC is KServe's server.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

import orjson
from kserve.errors import InvalidInput

from . import http

logger = logging.getLogger("perf_predictor")
V2_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send, status: int, body: bytes, json_length: Optional[int] = None) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if json_length is None:
        headers.append((b"content-type", b"application/json"))
    else:
        headers += [(b"content-type", b"application/octet-stream"),
                    (http.BINARY_HEADER, str(json_length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def client_error(send, status: int, message: str, reason: Optional[str]) -> None:
    http.note_rejection(reason)
    logger.info("rejected request: %s", message)
    await respond(send, status, orjson.dumps({"error": message}))


class V2InferFastPath:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            match = V2_INFER.match(scope["path"])
            model = http.SERVED.get(match.group(1)) if match else None
            if model is not None and model.ready:
                return await self.serve(model, scope, receive, send)
        await self.app(scope, receive, send)

    async def serve(self, model, scope, receive, send) -> None:
        body = await read_body(receive)
        json_length = None
        for key, value in scope["headers"]:
            if key == http.BINARY_HEADER:
                try:
                    json_length = int(value)
                except ValueError:
                    return await client_error(send, 400, "Inference-Header-Content-Length must be an integer",
                                              "malformed_body")
        try:
            reply, reply_json_length = await model.infer_v2_rest(body, json_length)
        except InvalidInput as exc:
            return await client_error(send, 400, str(exc), getattr(exc, "code", None))
        except Exception as exc:  # a bug of ours: the client gets a 500 in the protocol's shape
            logger.exception("inference failed")
            return await respond(send, 500, orjson.dumps({"error": f"internal error: {type(exc).__name__}"}))
        await respond(send, 200, reply, reply_json_length)
