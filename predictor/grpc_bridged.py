"""gRPC ModelInfer for our models, arriving from the Envoy front (grpc_front.py) over HTTP/1.1.

Envoy terminates gRPC's HTTP/2 and hands a unary ModelInfer to the REST port as one HTTP/1.1 POST to
/inference.GRPCInferenceService/ModelInfer whose body is the gRPC-framed message; its reverse bridge
adds the `grpc-status: 0` trailer to a 200 with a body. A failed call is answered here as gRPC's
trailers-only reply (200, no body, `grpc-status` and `grpc-message` headers), which Envoy passes on
as it is. The checks and the reply are the codec's, as for KServe's gRPC server.
"""
from __future__ import annotations

import logging
import zlib
from typing import Optional
from urllib.parse import quote

from google.protobuf.message import DecodeError
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest

from . import http

logger = logging.getLogger("perf_predictor")
PATH = "/inference.GRPCInferenceService/ModelInfer"
# gRPC status codes (grpc/doc/statuscodes.md)
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 3, 5, 8, 12, 13, 14
DECOMPRESS = {b"gzip": lambda data: zlib.decompress(data, 16 + zlib.MAX_WBITS), b"deflate": zlib.decompress}
ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity,deflate,gzip")


class CallError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_bridged_infer(scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH


async def _reply(send, headers: list, body: bytes = b"") -> None:
    headers = [(b"content-type", b"application/grpc"), (b"content-length", str(len(body)).encode()),
               ACCEPT_ENCODING, *headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _fail(send, status: int, message: str) -> None:
    # grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec); printable ASCII but % passes as is
    await _reply(send, [(b"grpc-status", str(status).encode()),
                        (b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())])


def _max_message_bytes() -> int:
    # KServe's flag, as its own gRPC server applies it; every worker process parses the same argv
    limit = getattr(model_server.args, "grpc_max_receive_message_length", None)
    return limit if limit and limit > 0 else 1 << 62


def message_of(body: bytes, encoding: Optional[bytes]) -> bytes:
    """The one message of a unary call, out of its gRPC frame (decompressed if the client compressed it)."""
    if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise CallError(INVALID_ARGUMENT, "malformed gRPC frame: a unary call carries one length-prefixed message")
    message, limit = body[5:], _max_message_bytes()
    if body[0] == 1:
        decompress = DECOMPRESS.get(encoding or b"identity")
        if decompress is None:
            raise CallError(UNIMPLEMENTED, f"message compressed with {(encoding or b'').decode()!r}; "
                                           "this server reads identity, deflate and gzip")
        try:
            message = decompress(message)
        except zlib.error as exc:
            raise CallError(INVALID_ARGUMENT, f"the compressed message does not decompress: {exc}") from None
    elif body[0] != 0:
        raise CallError(INVALID_ARGUMENT, "malformed gRPC frame: unknown compression flag")
    if len(message) > limit:
        raise CallError(RESOURCE_EXHAUSTED, f"received message larger than max ({len(message)} vs. {limit})")
    return message


def parse(body: bytes, encoding: Optional[bytes]) -> ModelInferRequest:
    try:
        return ModelInferRequest.FromString(message_of(body, encoding))
    except DecodeError as exc:
        raise CallError(INVALID_ARGUMENT, f"the message is not a ModelInferRequest: {exc}") from None


async def serve(scope, receive, send, read_body) -> None:
    body = await read_body(receive)
    encoding = next((value for key, value in scope["headers"] if key == b"grpc-encoding"), None)
    try:
        request = parse(body, encoding)
    except CallError as exc:
        logger.info("rejected gRPC call: %s", exc)
        return await _fail(send, exc.status, str(exc))
    model = http.SERVED.get(request.model_name)
    if model is None:  # status and message as KServe's gRPC server gives them
        return await _fail(send, NOT_FOUND, f"Model with name {request.model_name} does not exist.")
    if not model.ready:
        return await _fail(send, UNAVAILABLE, f"Model with name {request.model_name} is not ready.")
    with http.tracked(model.name, "grpc", "v2_infer") as state:
        try:
            reply = await model.infer_grpc(request, inline=True)
        except InvalidInput as exc:
            state.update(status=400, reason=getattr(exc, "code", None))
            logger.info("rejected request: %s", exc)
            return await _fail(send, INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # a bug of ours: the client still gets a gRPC status, the server stays up
            logger.exception("inference failed")
            return await _fail(send, INTERNAL, f"internal error: {type(exc).__name__}")
        state["status"] = 200
        message = reply.SerializeToString()
        await _reply(send, [], b"\x00" + len(message).to_bytes(4, "big") + message)
