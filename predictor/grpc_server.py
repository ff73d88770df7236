"""The native gRPC server (the default): HTTP/2 by libnghttp2 (_h2.c) on the server's event loop, in
the single process and in each worker process, standing where KServe's GRPCServer would.

ModelInfer goes to the model by grpc_infer.start, with no task: its reply is written from the
callback that delivers its forecast. KServe's own servicer replies to the v2 protocol's other RPCs,
with the statuses KServe's interceptor gives its errors (its repository RPCs only when enabled). With
authentication on, every call but the health RPCs shows its token first (auth.py). Limits: the message size flags,
16 KiB of request headers (grpcio's default), 1,000 streams per connection, 4,096 connections, caps
on unanswered request bytes per connection and per process, and timeouts for connections that stay
silent or idle and for calls whose request or reply stalls.

On SIGTERM every connection, idle or not, gets a GOAWAY first and the server keeps serving for
--drain_seconds (`drain_on_shutdown`), so clients move elsewhere; then a final GOAWAY, and calls in
flight get their replies within the grace period.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from functools import partial
from typing import Awaitable, Callable, Optional

from google.protobuf.message import DecodeError
from kserve import errors
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer

from . import auth, connections, grpc_infer
from .contract import (DEADLINE_EXCEEDED, INTERNAL, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE,
                       UNIMPLEMENTED, internal_error)
from .grpc_infer import INFER_PATH, CallError, Reply

try:
    from . import _h2 as h2  # compiled from _h2.c at install; needs libnghttp2.so.14
except ImportError as exc:
    h2, UNAVAILABLE_BECAUSE = None, str(exc)
else:
    UNAVAILABLE_BECAUSE = ""

logger = logging.getLogger("perf_predictor")

SERVICE = "inference.GRPCInferenceService"
MAX_HEADER_BYTES = 16 << 10  # HPACK-counted (name + value + 32 per field), as SETTINGS_MAX_HEADER_LIST_SIZE
MAX_STREAMS = 1000  # per connection
MAX_CONNECTIONS = 4096
BACKLOG = 1024  # connections the kernel queues before the loop accepts them (overflow drops SYNs)
# request bytes held for calls with no reply yet: per connection (or 4 messages, if more), per process
MAX_BUFFERED_PER_CONNECTION, MAX_BUFFERED = 64 << 20, 256 << 20
PREFACE_TIMEOUT_S, IDLE_TIMEOUT_S = 10, 600  # a connection that says nothing / makes no call is closed
CLOSE_TIMEOUT_S = 5  # a client that does not read what is left to send is cut off
# a call whose request has not ended, or whose reply has not gone out, this long after it began or was
# replied to is reset (its bytes are held meanwhile); a connection that takes nothing for as long is cut off
STALL_TIMEOUT_S = 60
SWEEP_S = 5  # how often the timeouts above are checked
STREAM_WINDOW, CONNECTION_WINDOW = 4 << 20, 16 << 20  # a 1,000-series request arrives without waiting
TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# KServe's errors -> gRPC status, as its ExceptionToStatusInterceptor maps them for grpcio
KSERVE_STATUS = [((errors.InferenceError, errors.InvalidInput, errors.UnsupportedProtocol), INVALID_ARGUMENT),
                 ((errors.ServerNotReady, errors.ServerNotLive, errors.ModelNotReady), UNAVAILABLE),
                 ((errors.ModelNotFound,), NOT_FOUND), ((NotImplementedError,), UNIMPLEMENTED)]
OK_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"), grpc_infer.ACCEPT_ENCODING)
OK_TRAILERS = ((b"grpc-status", b"0"),)
INFER = INFER_PATH.encode()
WANTED_HEADERS = (b":method", b":path", b"content-type", b"grpc-encoding", b"grpc-timeout", b"authorization")
# SETTINGS: MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE (RFC 9113 6.5.2)
SETTINGS = {3: MAX_STREAMS, 4: STREAM_WINDOW, 6: MAX_HEADER_BYTES}
NO_ERROR, INTERNAL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0, 2, 8, 11  # HTTP/2 error codes
ERR_STREAM_CLOSED = -510  # what respond() gives for a stream that is no longer open (_h2.c)


def available() -> bool:
    return h2 is not None


def listen_address() -> tuple[socket.AddressFamily, str]:
    """All interfaces, as KServe's gRPC server listens: IPv6 and IPv4 where the host has IPv6."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::", 0))
        return socket.AF_INET6, "::"
    except OSError:
        return socket.AF_INET, "0.0.0.0"


def bind(port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket: all interfaces, IPv4 too where the host has IPv6, as KServe's gRPC server."""
    family, address = listen_address()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # worker processes share the port; the kernel spreads connections over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"gRPC port {port} is not free: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def timeout_of(value: Optional[bytes]) -> Optional[float]:
    """grpc-timeout ("1S", "250m": at most 8 digits and a unit) in seconds."""
    if value is None:
        return None
    digits, unit = value[:-1], value[-1:]
    if not (0 < len(digits) <= 8 and digits.isdigit() and unit in TIMEOUT_UNITS):
        raise CallError(INVALID_ARGUMENT, f"malformed grpc-timeout {value.decode('latin-1')!r}")
    return int(digits) * TIMEOUT_UNITS[unit]


def kserve_rpcs(servicer: InferenceServicer, repository_api: bool = False) -> dict[bytes, tuple[type, Callable]]:
    """path -> (request message class, KServe's handler) for the unary RPCs KServe implements, but ModelInfer
    (and its repository RPCs, unless `repository_api`: auth.py)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return {f"/{SERVICE}/{m.name}".encode(): (getattr(pb, m.input_type.name), getattr(servicer, m.name))
            for m in service.methods
            if m.name != "ModelInfer" and m.name in InferenceServicer.__dict__
            and not (m.client_streaming or m.server_streaming)
            and (repository_api or m.name not in auth.GRPC_REPOSITORY)}


class Stream:
    __slots__ = ("headers", "header_bytes", "chunks", "size", "begun", "call", "task", "deadline", "replied", "since")

    def __init__(self, headers: dict[bytes, bytes], header_bytes: int):
        self.since = time.monotonic()  # opened; then replied
        self.headers = headers  # the wanted fields only (_h2.c)
        self.header_bytes = header_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.begun = False  # the request ended and was handed on: to the model (call) or KServe (task)
        self.call: Optional[grpc_infer.Call] = None
        self.task: Optional[asyncio.Task] = None
        self.deadline: Optional[asyncio.TimerHandle] = None  # a ModelInfer's grpc-timeout
        self.replied = False  # a reply was submitted (a too-large body is replied before it ends)

    def abandon(self) -> None:
        """The client reset the call or went away: no point finishing its work."""
        if self.task is not None:
            self.task.cancel()
        if self.call is not None and not self.replied:
            self.call.cancel()


class NativeGRPCServer:
    """Serves the gRPC port from this process's event loop until stop()."""

    def __init__(self, port: int, sock: Optional[socket.socket] = None, reuse_port: bool = False,
                 drain_s: int = 0, grace_period: int = 30):
        self.port = port
        self.drain_s = drain_s  # the port still takes calls this long after drain()
        self.grace_period = grace_period
        self._sock = sock
        self._reuse_port = reuse_port
        self.rpcs: dict[bytes, tuple[type, Callable]] = {}
        self.registry = None  # KServe's model registry (use())
        self.gate: Optional[auth.Gate] = None  # with authentication on: checks every call's token
        self.connections: set[Connection] = set()
        self.buffered = 0  # request bytes held by all connections
        self.draining = False
        self._stopping = False
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._stopped: Optional[asyncio.Future] = None

    def use(self, data_plane, model_repository_extension, grace_period: int) -> NativeGRPCServer:
        self.registry = data_plane.model_registry
        policy = auth.current()
        self.gate = auth.Gate(policy) if policy.token_file else None
        servicer = grpc_infer.ForecastServicer(data_plane, model_repository_extension)  # KServe's, repository fixed
        self.rpcs = kserve_rpcs(servicer, policy.repository_api)
        self.grace_period = grace_period
        return self

    def as_kserve_class(self) -> Callable[..., NativeGRPCServer]:
        """Stands in for KServe's GRPCServer class, which ModelServer instantiates with its data plane."""
        def build(port, data_plane, model_repository_extension, kwargs=None, grace_period=30):
            return self.use(data_plane, model_repository_extension, grace_period)

        return build

    async def start(self, max_workers: Optional[int] = None) -> None:
        """Serves until stop(); `max_workers` (KServe's thread count for grpcio) does not apply."""
        self.loop = asyncio.get_running_loop()
        self._stopped = self.loop.create_future()
        sock = self._sock or bind(self.port, self._reuse_port)
        # the backlog again: create_server listens on a given socket anew, with 100 unless told
        self._server = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=BACKLOG)
        logger.info("gRPC on port %d served in process %d (libnghttp2)", self.port, os.getpid())
        sweeper = self.loop.create_task(self._sweep())
        try:
            if self._stopping:  # stop() came while the server was being created
                self._server.close()
            else:
                await self._stopped
        finally:
            sweeper.cancel()

    async def _sweep(self) -> None:
        """Closes connections that never spoke HTTP/2, or have made no call for a long time; resets calls
        that stalled."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for connection in list(self.connections):
                if connection.paused and now - connection.paused_since > STALL_TIMEOUT_S:
                    connection.transport.abort()  # takes nothing of what was written: it is dropped
                elif connection.streams:
                    connection.expire(now)
                elif not connection.spoke and now - connection.last_active > PREFACE_TIMEOUT_S:
                    connection.close()
                elif now - connection.last_active > IDLE_TIMEOUT_S:
                    connection.goaway()  # closes it: nothing is in flight

    def drain(self) -> bool:
        """Every connection gets a GOAWAY (NO_ERROR) now and keeps working, so clients open their next
        connection elsewhere. Safe from a signal handler. False if already draining or not serving."""
        if self.draining or self.loop is None or self.loop.is_closed():
            return False
        self.draining = True
        self.loop.call_soon_threadsafe(lambda: [c.shutdown_notice() for c in list(self.connections)])
        return True

    async def stop(self, sig: Optional[int] = None) -> None:
        """No new connections; calls in flight replied within the grace period; then every connection closes."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is None:  # not serving yet: start() sees the flag once its server exists
            return
        if self.drain() and self.drain_s > 0:  # nobody drained before REST stopped (worker processes)
            logger.info("draining gRPC connections for %ds", self.drain_s)
            await asyncio.sleep(self.drain_s)
        self._server.close()
        for connection in list(self.connections):
            connection.goaway()
        deadline = time.monotonic() + self.grace_period
        while any(c.busy() for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.close()
        self._stopped.set_result(None)

    def call(self, connection: Connection, stream_id: int, stream: Stream) -> None:
        """Answers one finished request stream, now or later; never raises. ModelInfer goes to the model
        without a task (grpc_infer.start), so its reply is written the moment its forecast is ready."""
        started = time.perf_counter()
        try:
            timeout = timeout_of(stream.headers.get(b"grpc-timeout"))
            path, encoding = stream.headers.get(b":path"), stream.headers.get(b"grpc-encoding")
            if self.gate is not None and (refusal := self.gate.grpc_refusal(path, [
                    v for v in (stream.headers.get(b"authorization"),) if v is not None])) is not None:
                connection.reply(stream_id, Reply(auth.UNAUTHENTICATED, refusal))
            elif path == INFER:
                stream.call = grpc_infer.start(self.registry, stream.chunks, encoding, started,
                                               partial(connection.reply, stream_id))
                if stream.call is not None and timeout is not None:
                    stream.deadline = self.loop.call_later(timeout, connection.expire_call, stream_id)
            elif path in self.rpcs:
                work = self._kserve(*self.rpcs[path], b"".join(stream.chunks), encoding)
                stream.task = self.loop.create_task(
                    connection.reply_when(stream_id, work if timeout is None else asyncio.wait_for(work, timeout)))
            else:
                connection.reply(stream_id, Reply(UNIMPLEMENTED, f"Method not found: {path.decode('latin-1')}"))
        except CallError as exc:
            connection.reply(stream_id, Reply(exc.status, str(exc)))

    @staticmethod
    async def _kserve(request_class: type, handler: Callable, body: bytes, encoding: Optional[bytes]) -> Reply:
        try:
            request = request_class.FromString(grpc_infer.message_of(body, encoding, grpc_infer.max_message_bytes("receive")))
        except DecodeError as exc:
            return Reply(INVALID_ARGUMENT, f"the message is not a {request_class.__name__}: {exc}")
        try:
            response = await handler(request, None)  # KServe's handlers but ModelInfer never use the context
        except Exception as exc:
            status = next((code for kinds, code in KSERVE_STATUS if isinstance(exc, kinds)), None)
            if status is None:
                raise
            return Reply(status, str(getattr(exc, "reason", exc)))
        return Reply(0, "", grpc_infer.framed(response.SerializeToString()))


class Connection(asyncio.Protocol):
    """One client connection: bytes into libnghttp2, its events into streams, replies back out."""

    def __init__(self, server: NativeGRPCServer):
        self.server = server
        self.streams: dict[int, Stream] = {}
        self.buffered = 0  # request bytes held for streams not yet replied
        self.spoke = False  # any bytes received
        self.last_active = time.monotonic()
        self.transport: Optional[asyncio.Transport] = None
        self.paused = False
        self.paused_since = 0.0
        self.notice_pending = False
        self.reading = False  # replies given meanwhile go out together when the read is handled
        self.reset_now: set[int] = set()  # streams closed by the events being handled
        self.session: Optional[h2.Session] = h2.Session(WANTED_HEADERS, MAX_HEADER_BYTES, SETTINGS)
        self.session.set_connection_window(CONNECTION_WINDOW)

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.server.connections) >= MAX_CONNECTIONS:
            logger.warning("gRPC connection refused: already %d open", MAX_CONNECTIONS)
            self.session.goaway(ENHANCE_YOUR_CALM)
        # a connection opened while draining hears the GOAWAY with its first reply: sent before any call,
        # it makes clients give up that call (nghttp does) instead of moving only their next ones
        self.notice_pending = self.server.draining
        self.server.connections.add(self)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            return
        self.spoke = True
        self.last_active = time.monotonic()
        try:
            events = self.session.recv(data)
        except h2.Error:  # not HTTP/2, or a protocol error
            self.flush()  # the GOAWAY libnghttp2 may have queued
            self.close()
            return
        self.reading = True
        try:
            self._handle(events)
        finally:
            self.reading = False
        if self.session is not None and self.session.want_write():  # acks, window updates, refusals
            self.flush()
        elif not self.session.want_read():  # the client said GOAWAY; nothing in flight
            self.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.server.connections.discard(self)
        for stream in self.streams.values():
            stream.abandon()
            if not stream.replied:
                self._release(stream)
        self.streams.clear()
        if self.session is not None:
            self.session.close()
            self.session = None

    def pause_writing(self) -> None:  # the client does not read: libnghttp2 keeps the frames meanwhile
        self.paused = True
        self.paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self.paused = False
        self.flush()

    # --- what the server asks of a connection
    def flush(self) -> None:
        if self.session is None or self.paused or self.transport is None:
            return
        try:
            data = self.session.send()
        except h2.Error:
            self.close()
            return
        if data:
            self.transport.write(data)
        if (events := self.session.take()) is not None:  # streams closed by what was just sent
            self._handle(events)
        if not (self.session.want_read() or self.session.want_write()):
            self.close()  # after a final GOAWAY with nothing left in flight

    def shutdown_notice(self) -> None:
        if self.session is not None:
            self.session.shutdown_notice()
            self.flush()

    def goaway(self) -> None:
        if self.session is not None:
            self.session.goaway(NO_ERROR)
            self.flush()

    def expire(self, now: float) -> None:
        """Resets calls whose request stopped arriving or whose reply is not being taken: their bytes
        are otherwise held as long as the connection stays open."""
        for stream_id, stream in list(self.streams.items()):
            if now - stream.since > STALL_TIMEOUT_S and (stream.replied or not stream.begun):
                if not stream.replied:
                    self._release(stream)
                self.session.reset(stream_id, CANCEL)
        self.flush()

    def busy(self) -> bool:
        return self.session is not None and bool(self.streams)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # once what is left is written...
            self.server.loop.call_later(CLOSE_TIMEOUT_S, self._abort)

    def _abort(self) -> None:  # ...or not, if the client stopped reading
        if self in self.server.connections:
            self.transport.abort()

    # --- replies
    def submit_reply(self, stream_id: int, reply: Reply) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.replied or self.session is None:  # reset by the client meanwhile
            return
        if self.notice_pending:
            self.notice_pending = False
            self.session.shutdown_notice()
        self._release(stream)
        if reply.status == 0:
            submitted = self.session.respond(stream_id, OK_HEADERS, reply.body, OK_TRAILERS)
        else:  # trailers-only
            submitted = self.session.respond(stream_id, (
                *OK_HEADERS, (b"grpc-status", str(reply.status).encode()),
                (b"grpc-message", grpc_infer.grpc_message(reply.message))))
        self._check_submitted(stream_id, submitted)

    def _release(self, stream: Stream) -> None:
        """The request is replied: its bytes are no longer held."""
        stream.replied = True
        stream.since = time.monotonic()
        if stream.deadline is not None:
            stream.deadline.cancel()
        self.buffered -= stream.size
        self.server.buffered -= stream.size
        stream.chunks = []

    def _check_submitted(self, stream_id: int, result: int) -> None:
        if result == ERR_STREAM_CLOSED:  # the client reset the call: nobody to answer, nothing to log
            return
        if result < 0:  # libnghttp2 refused the reply: reset rather than hang
            logger.warning("gRPC reply on stream %d not sent: %s", stream_id, h2.strerror(result))
            self.session.reset(stream_id, INTERNAL_ERROR)

    def _http_error(self, stream_id: int, status: bytes) -> None:
        self._release(self.streams[stream_id])
        self._check_submitted(stream_id, self.session.respond(stream_id, ((b":status", status),)))

    def reply(self, stream_id: int, reply: Reply) -> None:
        self.submit_reply(stream_id, reply)
        if not self.reading:
            self.flush()

    async def reply_when(self, stream_id: int, work: Awaitable[Reply]) -> None:
        """The reply to a call KServe's servicer handles; never raises."""
        try:
            reply = await work
        except asyncio.TimeoutError:
            reply = Reply(DEADLINE_EXCEEDED, "Deadline Exceeded")
        except Exception as exc:  # a bug of ours: the client still gets a status, the server stays up
            logger.exception("gRPC call failed")
            reply = Reply(INTERNAL, internal_error(exc))
        self.reply(stream_id, reply)

    def expire_call(self, stream_id: int) -> None:
        """A ModelInfer's grpc-timeout passed before its forecast was ready."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.call is not None and not stream.replied:
            stream.call.cancel()
            self.reply(stream_id, Reply(DEADLINE_EXCEEDED, "Deadline Exceeded"))

    # --- libnghttp2's events (predictor/_h2.c), in the order it reported them
    def _handle(self, events: list[tuple]) -> None:
        # a call reset in the same read as its request (a rapid reset) is never begun
        self.reset_now = {event[1] for event in events if event[0] == h2.CLOSED}
        for event in events:
            kind, stream_id = event[0], event[1]
            if kind == h2.DATA:
                self._on_data(stream_id, event[2])
            elif kind == h2.HEADERS:
                stream = self.streams.get(stream_id)
                if stream is None:
                    stream = self.streams[stream_id] = Stream(event[2], event[3])
                else:  # trailers
                    stream.headers.update(event[2])
                    stream.header_bytes += event[3]
                self._on_frame(stream_id, stream, headers=True, end=event[4])
            elif kind == h2.END:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self._on_frame(stream_id, stream, headers=False, end=True)
            elif kind == h2.CLOSED:
                self._on_close(stream_id)

    def _on_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.replied:
            return  # the rest of a body already refused: dropped
        length = len(data)
        stream.size += length
        self.buffered += length
        self.server.buffered += length
        limit = grpc_infer.max_message_bytes("receive")
        # replied before the request has all arrived; the rest of it is read and dropped (an
        # RST_STREAM NO_ERROR to stop the upload left grpcio clients with INTERNAL, not this reply)
        if stream.size > limit + 5:
            self.submit_reply(stream_id, grpc_infer.rejected("unknown", RESOURCE_EXHAUSTED, str(
                grpc_infer.too_large(stream.size - 5, limit)), time.perf_counter()))
        elif (self.buffered > max(MAX_BUFFERED_PER_CONNECTION, 4 * (limit + 5))
              or self.server.buffered > max(MAX_BUFFERED, 4 * (limit + 5))):
            self.submit_reply(stream_id, Reply(RESOURCE_EXHAUSTED, "the server holds too many bytes of unanswered "
                                                              "requests; retry later or elsewhere"))
        else:
            stream.chunks.append(data)

    def _on_frame(self, stream_id: int, stream: Stream, headers: bool, end: bool) -> None:
        if stream.replied or stream.begun:
            return
        if headers and stream.header_bytes > MAX_HEADER_BYTES:
            self.submit_reply(stream_id, Reply(RESOURCE_EXHAUSTED, f"request headers larger than {MAX_HEADER_BYTES} bytes"))
        elif not end:
            return
        elif stream.headers.get(b":method") != b"POST":
            self._http_error(stream_id, b"405")
        elif not is_grpc(stream.headers.get(b"content-type", b"")):
            self._http_error(stream_id, b"415")  # as the gRPC over HTTP/2 spec asks
        elif stream_id not in self.reset_now:
            stream.begun = True
            self.server.call(self, stream_id, stream)

    def _on_close(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.abandon()
            if not stream.replied:
                self._release(stream)


def is_grpc(content_type: bytes) -> bool:
    return content_type == b"application/grpc" or content_type.startswith((b"application/grpc+", b"application/grpc;"))


class DrainFirst:
    """`drain_first(then, *args)`: on the first signal, drain `server` (GOAWAY to every connection),
    keep serving `server.drain_s` seconds so calls arriving meanwhile are replied with the GOAWAY, then
    `then(*args)`, the stop it stands before. A second signal ends the wait at once. Runs in a signal
    handler, on the loop's thread."""

    def __init__(self, server: NativeGRPCServer):
        self.server = server
        self.waiting: list = []

    def __call__(self, then, *args) -> None:
        if not self.server.drain() or self.server.drain_s <= 0:
            for handle in self.waiting:
                handle.cancel()
            then(*args)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the loop has not started or has ended: nothing to wait for
            then(*args)
            return
        logger.info("draining gRPC connections; stopping in %ds", self.server.drain_s)
        self.waiting.append(loop.call_soon_threadsafe(
            lambda: self.waiting.append(loop.call_later(self.server.drain_s, then, *args))))


def drain_on_shutdown(server: NativeGRPCServer) -> None:
    """In the single process: the stop waits for the drain. uvicorn takes the signal and stops REST at
    once (KServe's ModelServer.stop only runs after it), so both are wrapped. (Worker processes drain
    their own server: workers.py.)"""
    import uvicorn
    from kserve import ModelServer

    handle_exit, stop = uvicorn.Server.handle_exit, ModelServer.stop
    drain_first = DrainFirst(server)
    def uvicorn_exit(self, sig, frame) -> None:
        connections.start_draining(self.server_state.connections)  # REST replies say Connection: close
        drain_first(handle_exit, self, sig, frame)

    uvicorn.Server.handle_exit = uvicorn_exit
    ModelServer.stop = lambda self, sig: drain_first(stop, self, sig)
