"""gRPC ModelInfer for our models, for both gRPC servers: from the gRPC-framed request message to the
framed reply (the native server, grpc_server.py), and as a servicer for KServe's grpcio server.

The request is decoded straight from protobuf to numpy and the reply written in protobuf's wire format
(codec.py), with the checks of the request contract; KServe's InferRequest objects are never built.
A call's reply is handed over the moment its forecast is ready, and the call is counted after.
"""
from __future__ import annotations

import functools
import logging
import time
import zlib
from typing import Callable, NamedTuple, Optional
from urllib.parse import quote

from google.protobuf.message import DecodeError
from grpc_interceptor import exceptions as grpc_exceptions
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.grpc import server as kserve_grpc_server
from kserve.protocol.grpc.grpc_predict_v2_pb2 import (ModelInferRequest, ModelInferResponse, RepositoryModelLoadResponse,
                                                      RepositoryModelUnloadResponse)
from kserve.protocol.grpc.servicer import InferenceServicer

from . import auth, codec, metrics
from .admission import OVERLOAD, Admission
from .batching import Pending, until_done
from .contract import (HTTP_STATUS_OF_GRPC, INTERNAL, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE,
                       UNIMPLEMENTED, internal_error, reason_of)
from .model import PerfPredictor, served, sole_model

logger = logging.getLogger("perf_predictor")
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}  # zlib's framing for each grpc-encoding
MAX_MESSAGE_TEXT = 1024  # grpc-message repeats client text (model names...); headers have limits
ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity,deflate,gzip")


class Reply(NamedTuple):
    status: int  # gRPC status; 0 is OK
    message: str = ""  # grpc-message of a failed call
    body: bytes = b""  # the framed reply message of a successful call


class CallError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def grpc_message(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec); printable ASCII but % passes as is."""
    if len(message) > MAX_MESSAGE_TEXT:
        message = message[:MAX_MESSAGE_TEXT] + "..."
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


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


def parse(body: bytes, encoding: Optional[bytes], limit: int) -> ModelInferRequest:
    try:
        return ModelInferRequest.FromString(message_of(body, encoding, limit))
    except DecodeError as exc:
        raise CallError(INVALID_ARGUMENT, f"the message is not a ModelInferRequest: {exc}") from None


def rejected(model: str, status: int, message: str, started: float, reason: Optional[str] = None) -> Reply:
    """A call refused before the model saw it, counted as REST counts its rejections (a model it does
    not know as "unknown")."""
    metrics.record(model, "grpc", "v2_infer", HTTP_STATUS_OF_GRPC[status], reason, time.perf_counter() - started)
    return Reply(status, message)


def submit(model: PerfPredictor, request: ModelInferRequest, inline: bool,
           done: Callable[[Optional[bytes], Optional[BaseException]], None]) -> Pending:
    """Checks the request now (InvalidInput raised here) and queues it; `done` gets the serialized
    reply as soon as its rows are predicted, and the predict time is recorded after."""
    history = codec.decode_grpc(request, model.history_length)
    started, timer = time.perf_counter(), metrics.predict_seconds(model.name)

    def predicted(forecasts, exc: Optional[BaseException]) -> None:
        message = None
        if exc is None:
            try:
                message = codec.encode_grpc(request, model.name, model.version, model.output_names, forecasts)
            except Exception as encode_exc:  # an output the model does not have
                exc = encode_exc
        done(message, exc)
        timer.observe(time.perf_counter() - started)

    return model.submit(history, "grpc", inline, predicted)


class Call:
    """One ModelInfer given to the model: its reply goes to `reply` (once) as soon as it is ready, and
    only then is the call counted."""

    __slots__ = ("reply", "request", "entry", "admission")

    def __init__(self, model: PerfPredictor, reply: Callable[[Reply], None]):
        self.reply = reply
        self.request = metrics.InFlight(model.name, "grpc", "v2_infer")
        self.entry: Optional[Pending] = None  # in the model's micro-batch queue
        self.admission: Optional[Admission] = model.admission  # the place it holds, until counted

    def counted(self, status: int, reason: Optional[str] = None) -> None:
        if self.admission is not None:
            self.admission.leave()
            self.admission = None
        self.request.done(status, reason)

    def predicted(self, message: Optional[bytes], exc: Optional[BaseException]) -> None:
        self.entry = None  # it held this call: a cycle the garbage collector would otherwise have to find
        if exc is None and len(message) > (send_limit := max_message_bytes("send")):
            # as grpcio's server refuses to send it; counted as a client error, reason too_large
            self.reply(Reply(RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(message)} vs. {send_limit})"))
            self.counted(413)
        elif exc is None:
            self.reply(Reply(0, "", framed(message)))
            self.counted(200)
        elif isinstance(exc, InvalidInput):
            logger.info("rejected request: %s", exc)
            self.reply(Reply(INVALID_ARGUMENT, str(exc)))
            self.counted(400, reason_of(exc))
        else:  # a bug of ours: the client still gets a status
            logger.error("gRPC call failed", exc_info=exc)
            self.reply(Reply(INTERNAL, internal_error(exc)))
            self.counted(500)

    def cancel(self) -> None:
        """The client reset the call, or its grpc-timeout passed: no reply, and no predict if not begun."""
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None
        self.counted(499, "cancelled")


def start(registry: ModelRepository, chunks: list[bytes], encoding: Optional[bytes], started: float,
          reply: Callable[[Reply], None]) -> Optional[Call]:
    """Begins one ModelInfer whose request body (one gRPC frame) came in `chunks`: `reply` gets the reply,
    at once for a call refused before the model sees it (then None is returned), else from the event
    loop when the forecast is ready. A process serving one model refuses a call for overload before
    its message is read (as REST refuses on the path): under overload most calls are refused, and
    parsing each first cost more than the refusal."""
    if (model := sole_model(registry)) is not None and model.ready and model.admission.full():
        metrics.record_refusal(model.name, "grpc")
        return reply(Reply(UNAVAILABLE, model.admission.message()))
    try:
        request = parse(b"".join(chunks), encoding, max_message_bytes("receive"))
    except CallError as exc:
        logger.info("rejected gRPC call: %s", exc)
        return reply(rejected("unknown", exc.status, str(exc), started))
    model = served(registry, request.model_name)
    if model is None:  # status and message as KServe's gRPC server gives them
        return reply(rejected("unknown", NOT_FOUND, f"Model with name {request.model_name} does not exist.", started))
    if not model.ready:
        return reply(rejected(model.name, UNAVAILABLE, f"Model with name {request.model_name} is not ready.", started))
    if not model.admission.enter():
        return reply(rejected(model.name, UNAVAILABLE, model.admission.message(), started, OVERLOAD))
    call = Call(model, reply)
    try:
        call.entry = submit(model, request, True, call.predicted)
    except Exception as exc:  # the request's tensors are refused (InvalidInput), or a bug of ours
        call.predicted(None, exc)
        return None
    return call


class ForecastServicer(InferenceServicer):
    """KServe's servicer with our ModelInfer, for KServe's grpcio server (--grpc_front kserve). KServe's
    interceptors still turn errors into statuses (INVALID_ARGUMENT for bad input); every other RPC,
    and a model not ours or not ready, is KServe's."""

    async def ModelInfer(self, request, context):
        model = served(self._data_plane.model_registry, request.model_name)
        if model is None or not model.ready:
            return await super().ModelInfer(request, context)
        with metrics.tracked(model.name, "grpc", "v2_infer") as state:
            if not model.admission.enter():
                state.update(status=503, reason=OVERLOAD)
                raise grpc_exceptions.Unavailable(model.admission.message())  # KServe's interceptor: UNAVAILABLE
            try:
                # grpcio hands calls to the loop one at a time: never inline (batching.py)
                message = await until_done(lambda done: submit(model, request, False, done))
            except InvalidInput as exc:
                state.update(status=400, reason=reason_of(exc))
                raise
            finally:
                model.admission.leave()
            state["status"] = 200
            return ModelInferResponse.FromString(message)

    # KServe 0.21's repository RPCs read a reply from ModelRepositoryExtension.load/unload, which return
    # None: every call answered INTERNAL after doing its work. Served only with --enable_repository_api.
    async def RepositoryModelLoad(self, request, context):
        await self._mode_repository_extension.load(request.model_name)
        return RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def RepositoryModelUnload(self, request, context):
        await self._mode_repository_extension.unload(request.model_name)
        return RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)


def use_forecast_servicer() -> None:
    """KServe's GRPCServer builds its servicer from this module attribute; in each process that runs it."""
    kserve_grpc_server.InferenceServicer = auth.grpcio_servicer(ForecastServicer, auth.current())
