"""The REST port's HTTP/1.1 connections: read timeouts, a header size cap, a cap on open connections,
and `Connection: close` while the process drains on SIGTERM.

uvicorn 0.55's httptools protocol (what KServe runs) closes a connection only when it stays idle
`--timeout_keep_alive` seconds after a reply. Before the first request, while headers arrive and while a
body arrives, nothing times out, headers have no size limit, and connections have no cap (its
`limit_concurrency` answers 503 to every request, health checks too, once that many connections are
open, idle ones included). So here, per connection:
- the request headers must arrive within `header_timeout` of the connection opening or of the request's
  first byte, and be at most MAX_HEADER_BYTES; the body within `body_timeout` of the headers. Past
  either (seen within a quarter of the shorter timeout, at most 1 s): 408 (431 for headers too large)
  `{"error": ...}` and the connection closes;
- past `max_connections` in this process, a new connection closes the connection that has waited
  longest for a request (idle, or its headers still arriving); if every one has a request in progress,
  the new connection's request gets 503 `{"error": ...}` and `Connection: close`. So clients holding
  connections without sending cannot keep the kubelet's health checks out;
- an inference request past the overload bound (admission.py) is answered 503 here, as soon as its
  headers are in: `overload_refusal` (rest.py's, per process) names the reply. No ASGI cycle, task or
  application runs for it, and its body is parsed off the connection in C and dropped, never held or
  handed on. The connection then serves the next request (kept alive unless the request or the drain
  says otherwise). A request pipelined behind one in progress is left to the application's own check,
  so replies stay in order.
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Callable, Optional

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .admission import RETRY_AFTER

logger = logging.getLogger("perf_predictor")
MAX_HEADER_BYTES = 16 << 10  # request line and header fields; as the gRPC port (grpc_server.py)
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
limits = None  # set by __main__ before the REST server is built (then Limits() is used where it is not)
draining = False  # this process got SIGTERM: every reply closes its connection (start_draining)
# (path, headers) -> the 503 body of an inference request past the overload bound, counted, or None to
# serve it; set per process by rest.install (each worker process has its models' own bounds)
overload_refusal: Optional[Callable[[str, list], Optional[bytes]]] = None
OVERLOADED_HEADERS = b"content-type: application/json\r\n" + b"".join(b"%s: %s\r\n" % field for field in RETRY_AFTER)


def default_max_connections() -> int:
    """4,096 (as the gRPC port), or a quarter of the process's file descriptors if that is less: the rest
    stays for the gRPC port, the model files and the health checks."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 4096 if soft == resource.RLIM_INFINITY else max(16, min(4096, soft // 4))


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 4096


def install(config, limits: Limits) -> None:
    """On a uvicorn Config before it is loaded; travels with it into worker processes."""
    config.http = LimitedHttpToolsProtocol
    config.perf_predictor_limits = limits


def start_draining(connections) -> None:
    """SIGTERM: from now on every reply says `Connection: close`, and so do those being prepared, so
    keep-alive clients reconnect (elsewhere) instead of sending into a connection about to close."""
    global draining
    draining = True
    for connection in list(connections):
        cycle = getattr(connection, "cycle", None)
        # a reply whose headers went out without it keeps its connection open: closing it after would
        # reset the client's next request, which is told on its own reply instead
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = getattr(config, "perf_predictor_limits", Limits())
        self.read_deadline: Optional[float] = None  # on the loop's clock; checked by the sweep (Sweep)
        self.waiting_since = self.loop.time()  # for a request (idle, or its headers arriving)
        self.header_bytes = 0
        self.refused: Optional[int] = None  # the status this connection was answered with instead
        self.over_cap = False
        self.discarding = False  # the body of a request refused for overload is being parsed and dropped
        self.close_after_discard = False

    # --- the cap on connections
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._close_longest_waiting():
            self.over_cap = True  # its request gets 503 once its headers are in
        self._time_reads(self.limits.header_timeout)

    def _waiting_for_request(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline and not self.discarding

    def _close_longest_waiting(self) -> bool:
        waiting = [c for c in self.connections if c is not self and isinstance(c, LimitedHttpToolsProtocol)
                   and c._waiting_for_request() and not c.transport.is_closing()]
        if not waiting:
            return False
        min(waiting, key=lambda c: c.waiting_since).transport.close()
        return True

    # --- timeouts and the header size
    def _time_reads(self, seconds: Optional[float]) -> None:
        if seconds is None:
            self.read_deadline = None
        else:
            self.read_deadline = self.loop.time() + seconds
            Sweep.of(self.loop, self.connections, self.limits)

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        if self.discarding:  # its 503 has gone out; the rest of its body did not come
            self.transport.close()
            return
        if self.cycle is not None and not self.cycle.response_complete:  # the body did not arrive
            if self.cycle.response_started:
                self.transport.abort()
                return
            self.cycle.disconnected = True  # whatever the application sends next goes nowhere
            self.cycle.message_event.set()
            what = "request body"
        else:
            what = "request headers"
        self._refuse(408, f"the {what} did not arrive within the server's timeout")

    def _refuse(self, status: int, message: str) -> None:
        """Answers `status` now and closes the connection; nothing more is read from it."""
        if self.refused is not None or self.transport.is_closing():
            return
        self.refused = status
        body = orjson.dumps({"error": message})
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self.discarding:  # a malformed body after its 503: nothing more to say
            self.transport.close()
        elif self.refused is None:  # not after our own refusal, which stopped the parser
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if self.refused is None:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_bytes = 0
        self._time_reads(self.limits.header_timeout)

    def _count_header_bytes(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
            raise ValueError("headers too large")  # stops the parser (uvicorn then answers nothing more)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._time_reads(self.limits.body_timeout)
        if overload_refusal is not None and self._refused_for_overload():
            return
        app = self.app
        if self.over_cap:  # uvicorn starts `self.app` for the request
            self.over_cap, self.app = False, refuse_over_cap
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        if draining and self.cycle is not None:
            self.cycle.keep_alive = False

    # --- overload: refused on the headers, the body dropped as it is parsed
    def _refused_for_overload(self) -> bool:
        if self.over_cap or self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return False  # the answer to a request in progress goes first: the application refuses it
        if self.parser.get_method() != b"POST" or self.parser.should_upgrade():
            return False
        try:
            path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False
        if b"%" in path:  # an escaped path is the application's to unquote
            return False
        body = overload_refusal(self.root_path + path.decode("ascii"), self.headers)
        if body is None:
            return False
        keep_alive = (self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
                      and not draining)
        # a client waiting for 100 Continue has sent no body and will not: the connection closes
        closing = not keep_alive or self.expect_100_continue
        head = [b"HTTP/1.1 503 Service Unavailable\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [OVERLOADED_HEADERS, b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n" if closing else b"\r\n", body]
        self.transport.write(b"".join(head))
        if self.expect_100_continue:
            self.transport.close()
        else:
            self.discarding, self.close_after_discard = True, closing
        return True

    def on_body(self, body: bytes) -> None:
        if not self.discarding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._time_reads(None)
        if not self.discarding:
            return super().on_message_complete()
        self.discarding = False
        if self.close_after_discard:  # the body was read first, so the kernel does not reset the reply
            self.transport.close()
        else:
            self.on_response_complete()  # the next request: pipelined behind it, or after the keep-alive wait

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.waiting_since = self.loop.time()

    def connection_lost(self, exc) -> None:
        self._time_reads(None)
        super().connection_lost(exc)


class Sweep:
    """Cuts off the connections of one event loop whose read deadline has passed, checked every
    `period` seconds (a quarter of the shorter timeout, at most 1 s). A deadline is a number on the
    connection, not a timer: timers made and cancelled on every request were a sizeable share of what
    a refusal for overload costs (docs/design.md)."""

    _running: dict[int, "Sweep"] = {}  # id(loop) -> its sweep

    def __init__(self, loop, connections: set, period: float):
        self.loop, self.connections, self.period = loop, connections, period

    @classmethod
    def of(cls, loop, connections: set, limits: Limits) -> None:
        """Starts the loop's sweep if it has none."""
        if id(loop) in cls._running and cls._running[id(loop)].loop is loop:
            return
        sweep = cls._running[id(loop)] = cls(loop, connections, min(1.0, limits.header_timeout / 4,
                                                                      limits.body_timeout / 4))
        loop.call_later(sweep.period, sweep.run)

    def run(self) -> None:
        if self.loop.is_closed():
            return
        now = self.loop.time()
        for connection in list(self.connections):
            deadline = getattr(connection, "read_deadline", None)
            if deadline is not None and deadline <= now:
                connection._read_timed_out()
        self.loop.call_later(self.period, self.run)


async def refuse_over_cap(scope, receive, send) -> None:
    body = orjson.dumps({"error": "the server has as many connections open as it may; retry later or elsewhere"})
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})
