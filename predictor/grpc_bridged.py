"""gRPC ModelInfer for our models, from the gRPC-framed request message to the framed reply.

`answer` is shared by both gRPC fronts that do not use grpcio: the native front (grpc_native.py) calls
it with the body of an HTTP/2 stream; the Envoy front (grpc_front.py) hands a unary ModelInfer to the
REST port as one HTTP/1.1 POST to /inference.GRPCInferenceService/ModelInfer, which `serve` answers
(Envoy's reverse bridge adds the `grpc-status: 0` trailer to a 200 with a body; a failed call is
answered as gRPC's trailers-only reply, which Envoy passes on as it is). The checks and the reply are
the codec's, as for KServe's gRPC server.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
import zlib
from typing import Callable, NamedTuple, Optional
from urllib.parse import quote

from google.protobuf.message import DecodeError
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest

from . import http
from .batching import Pending, until_done
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


class Reply(NamedTuple):
    status: int  # gRPC status; 0 is OK
    message: str = ""  # grpc-message of a failed call
    body: bytes = b""  # the framed reply message of a successful call


class CallError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_bridged_infer(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == INFER_PATH


def grpc_message(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec); printable ASCII but % passes as is."""
    if len(message) > MAX_MESSAGE_TEXT:
        message = message[:MAX_MESSAGE_TEXT] + "..."
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


async def _send(send, reply: Reply) -> None:
    headers = [(b"content-type", b"application/grpc"), (b"content-length", str(len(reply.body)).encode()),
               ACCEPT_ENCODING]
    if reply.status:
        headers += [(b"grpc-status", str(reply.status).encode()), (b"grpc-message", grpc_message(reply.message))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


@functools.cache
def max_message_bytes(direction: str) -> int:
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


def framed(message: bytes) -> bytes:
    """One gRPC message as it goes on the wire: uncompressed, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def too_large(size: int, limit: int) -> CallError:
    return CallError(RESOURCE_EXHAUSTED, f"received message larger than max ({size} vs. {limit})")


async def _framed_body(receive, limit: int) -> bytes:
    """The request body, refused as soon as it is longer than one message of `limit` bytes can be."""
    try:
        return await http.read_body(receive, max_bytes=limit + 5)
    except http.BodyTooLarge as exc:
        raise too_large(exc.size - 5, limit) from None


def parse(body: bytes, encoding: Optional[bytes], limit: int) -> ModelInferRequest:
    try:
        return ModelInferRequest.FromString(message_of(body, encoding, limit))
    except DecodeError as exc:
        raise CallError(INVALID_ARGUMENT, f"the message is not a ModelInferRequest: {exc}") from None


async def serve(scope, receive, send) -> None:
    """A ModelInfer bridged by Envoy, as an ASGI request to the REST port."""
    started = time.perf_counter()
    try:
        try:
            body = await _framed_body(receive, max_message_bytes("receive"))
        except CallError as exc:
            logger.info("rejected gRPC call: %s", exc)
            reply = rejected("unknown", exc.status, str(exc), started)
        else:
            reply = await answer(body, next((v for k, v in scope["headers"] if k == b"grpc-encoding"), None), started)
        await _send(send, reply)
    except Exception as exc:  # a bug of ours: the client still gets a gRPC status, the server stays up
        logger.exception("gRPC call failed")
        with contextlib.suppress(Exception):  # unless the reply had already started
            await _send(send, Reply(INTERNAL, f"internal error: {type(exc).__name__}"))


def rejected(model: str, status: int, message: str, started: float) -> Reply:
    """Counted as the REST path counts its rejections (a model it does not know as "unknown")."""
    http.record(model, "grpc", "v2_infer", HTTP_STATUS[status], None, time.perf_counter() - started)
    return Reply(status, message)


class Call:
    """One ModelInfer given to the model: its reply goes to `deliver` (once) as soon as it is ready, and
    only then is the call counted."""

    __slots__ = ("deliver", "request", "entry")

    def __init__(self, model, deliver: Callable[[Reply], None]):
        self.deliver = deliver
        self.request = http.InFlight(model.name, "grpc", "v2_infer")
        self.entry: Optional[Pending] = None  # in the model's micro-batch queue

    def predicted(self, message: Optional[bytes], exc: Optional[BaseException]) -> None:
        self.entry = None  # it held this call: a cycle the garbage collector would otherwise have to find
        if exc is None and len(message) > (send_limit := max_message_bytes("send")):
            # as grpcio's server refuses to send it; counted as a client error, reason too_large
            self.deliver(Reply(RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(message)} vs. {send_limit})"))
            self.request.done(413)
        elif exc is None:
            self.deliver(Reply(0, "", framed(message)))
            self.request.done(200)
        elif isinstance(exc, InvalidInput):
            logger.info("rejected request: %s", exc)
            self.deliver(Reply(INVALID_ARGUMENT, str(exc)))
            self.request.done(400, getattr(exc, "code", None))
        else:  # a bug of ours: the client still gets a status
            logger.error("gRPC call failed", exc_info=exc)
            self.deliver(Reply(INTERNAL, f"internal error: {type(exc).__name__}"))
            self.request.done(500)

    def cancel(self) -> None:
        """The client reset the call, or its grpc-timeout passed: no reply, and no predict if not begun."""
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None
        self.request.done(499, "cancelled")


def start(body: bytes, encoding: Optional[bytes], started: float, deliver: Callable[[Reply], None]) -> Optional[Call]:
    """Begins one ModelInfer whose request body (one gRPC frame) is `body`: `deliver` gets the reply, at
    once for a call refused before the model sees it (then None is returned), else from the event loop
    when the forecast is ready."""
    limit = max_message_bytes("receive")
    try:
        request = parse(body, encoding, limit)
    except CallError as exc:
        logger.info("rejected gRPC call: %s", exc)
        return deliver(rejected("unknown", exc.status, str(exc), started))
    model = http.SERVED.get(request.model_name)
    if model is None:  # status and message as KServe's gRPC server gives them
        return deliver(rejected("unknown", NOT_FOUND, f"Model with name {request.model_name} does not exist.", started))
    if not model.ready:
        return deliver(rejected(model.name, UNAVAILABLE, f"Model with name {request.model_name} is not ready.", started))
    call = Call(model, deliver)
    try:
        call.entry = model.submit_grpc(request, True, call.predicted)
    except Exception as exc:  # the request's tensors are refused (InvalidInput), or a bug of ours
        call.predicted(None, exc)
        return None
    return call


async def answer(body: bytes, encoding: Optional[bytes], started: float) -> Reply:
    """`start` for a coroutine (the Envoy front's bridged calls)."""
    return await until_done(lambda done: start(body, encoding, started, lambda reply: done(reply, None)))
