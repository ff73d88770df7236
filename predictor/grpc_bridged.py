"""gRPC ModelInfer for our models, arriving from the Envoy front (grpc_front.py) over HTTP/1.1.

Envoy terminates gRPC's HTTP/2 and hands a unary ModelInfer to the REST port as one HTTP/1.1 POST to
/inference.GRPCInferenceService/ModelInfer whose body is the gRPC-framed message; its reverse bridge
adds the `grpc-status: 0` trailer to a 200 with a body. A failed call is answered here as gRPC's
trailers-only reply (200, no body, `grpc-status` and `grpc-message` headers), which Envoy passes on
as it is. The checks and the reply are the codec's, as for KServe's gRPC server.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
import zlib
from typing import Optional
from urllib.parse import quote

from google.protobuf.message import DecodeError
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest

from . import http
from .grpc_front import INFER_PATH

logger = logging.getLogger("perf_predictor")
# gRPC status codes (grpc/doc/statuscodes.md)
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 3, 5, 8, 12, 13, 14
WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}  # zlib's framing for each grpc-encoding
MAX_MESSAGE_TEXT = 1024  # grpc-message repeats client text (model names...); headers have limits
ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity,deflate,gzip")
# the HTTP status a call rejected before the model saw it is counted with (http.record), by its gRPC
# status; INTERNAL here is the spec's status for a compressed message without grpc-encoding
HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, RESOURCE_EXHAUSTED: 413, UNIMPLEMENTED: 415,
               INTERNAL: 400, UNAVAILABLE: 503}


class CallError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_bridged_infer(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == INFER_PATH


async def _reply(send, headers: list, body: bytes = b"") -> None:
    headers = [(b"content-type", b"application/grpc"), (b"content-length", str(len(body)).encode()),
               ACCEPT_ENCODING, *headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _fail(send, status: int, message: str) -> None:
    # grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec); printable ASCII but % passes as is
    if len(message) > MAX_MESSAGE_TEXT:
        message = message[:MAX_MESSAGE_TEXT] + "..."
    await _reply(send, [(b"grpc-status", str(status).encode()),
                        (b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())])


@functools.cache
def _max_message_bytes(direction: str) -> int:
    # KServe's flags, as its own gRPC server applies them; every worker process parses the same argv
    limit = getattr(model_server.args, f"grpc_max_{direction}_message_length", None)
    return limit if limit and limit > 0 else 1 << 62


def _decompress(message: bytes, encoding: Optional[bytes], limit: int) -> bytes:
    if encoding in (None, b"identity"):
        raise CallError(INTERNAL, "the message is marked compressed but the call has no grpc-encoding")
    if encoding not in WBITS:
        raise CallError(UNIMPLEMENTED, f"message compressed with {encoding.decode('latin-1')!r}; "
                                       "this server reads identity, deflate and gzip")
    inflater = zlib.decompressobj(WBITS[encoding])
    try:
        out = inflater.decompress(message, limit + 1)  # never more than the limit allows, whatever the ratio
    except zlib.error as exc:
        raise CallError(INVALID_ARGUMENT, f"the compressed message does not decompress: {exc}") from None
    if len(out) > limit:
        raise CallError(RESOURCE_EXHAUSTED, f"received message larger than max (more than {limit} bytes "
                                            "once decompressed)")
    if not inflater.eof or inflater.unused_data:
        raise CallError(INVALID_ARGUMENT, f"the compressed message is not one whole {encoding.decode()} stream")
    return out


def message_of(body: bytes, encoding: Optional[bytes], limit: int) -> bytes:
    """The one message of a unary call, out of its gRPC frame (decompressed if the client compressed it)."""
    if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise CallError(INVALID_ARGUMENT, "malformed gRPC frame: a unary call carries one length-prefixed message")
    if body[0] == 1:
        return _decompress(body[5:], encoding, limit)
    if body[0] != 0:
        raise CallError(INVALID_ARGUMENT, "malformed gRPC frame: unknown compression flag")
    return body[5:]


async def _framed_body(receive, limit: int) -> bytes:
    """The request body, refused as soon as it is longer than one message of `limit` bytes can be."""
    try:
        return await http.read_body(receive, max_bytes=limit + 5)
    except http.BodyTooLarge as exc:
        raise CallError(RESOURCE_EXHAUSTED, f"received message larger than max ({exc.size - 5} vs. {limit})") from None


def parse(body: bytes, encoding: Optional[bytes], limit: int) -> ModelInferRequest:
    try:
        return ModelInferRequest.FromString(message_of(body, encoding, limit))
    except DecodeError as exc:
        raise CallError(INVALID_ARGUMENT, f"the message is not a ModelInferRequest: {exc}") from None


async def serve(scope, receive, send) -> None:
    try:
        await _serve(scope, receive, send)
    except Exception as exc:  # a bug of ours: the client still gets a gRPC status, the server stays up
        logger.exception("gRPC call failed")
        with contextlib.suppress(Exception):  # unless the reply had already started
            await _fail(send, INTERNAL, f"internal error: {type(exc).__name__}")


async def _reject(send, model: str, status: int, message: str, started: float) -> None:
    # counted as the REST path counts its rejections (a model it does not know as "unknown")
    http.record(model, "grpc", "v2_infer", HTTP_STATUS[status], None, time.perf_counter() - started)
    await _fail(send, status, message)


async def _serve(scope, receive, send) -> None:
    started = time.perf_counter()
    encoding = next((value for key, value in scope["headers"] if key == b"grpc-encoding"), None)
    limit = _max_message_bytes("receive")
    try:
        request = parse(await _framed_body(receive, limit), encoding, limit)
    except CallError as exc:
        logger.info("rejected gRPC call: %s", exc)
        return await _reject(send, "unknown", exc.status, str(exc), started)
    model = http.SERVED.get(request.model_name)
    if model is None:  # status and message as KServe's gRPC server gives them
        return await _reject(send, "unknown", NOT_FOUND, f"Model with name {request.model_name} does not exist.", started)
    if not model.ready:
        return await _reject(send, model.name, UNAVAILABLE, f"Model with name {request.model_name} is not ready.", started)
    with http.tracked(model.name, "grpc", "v2_infer") as state:
        try:
            reply = await model.infer_grpc(request, inline=True)
        except InvalidInput as exc:
            state.update(status=400, reason=getattr(exc, "code", None))
            logger.info("rejected request: %s", exc)
            return await _fail(send, INVALID_ARGUMENT, str(exc))
        message = reply.SerializeToString()
        if len(message) > (send_limit := _max_message_bytes("send")):  # as grpcio's server refuses to send it
            state["status"] = 413  # counted as a client error, reason too_large
            return await _fail(send, RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(message)} vs. {send_limit})")
        state["status"] = 200
        await _reply(send, [], b"\x00" + len(message).to_bytes(4, "big") + message)
