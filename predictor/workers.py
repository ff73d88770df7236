"""`--workers N` serves gRPC from every worker process, not only REST.

KServe 0.21 starts N uvicorn worker processes for REST but its gRPC server in the parent only, so
gRPC had one process's share of the machine whatever N was (800 single-series requests/s at 1 and
at 2 workers, while REST doubled). With `install`, the parent starts no gRPC server; each worker runs
KServe's GRPCServer (with our servicer) beside uvicorn on its own event loop, all bound to the same
port with SO_REUSEPORT (gRPC's default on Linux), and the kernel spreads connections over them. One
connection still lands on one worker, as it would on one pod: clients that open several connections
(or a mesh proxy in front) get all the workers.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass
from typing import Optional

from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest import server as rest_server
from kserve.protocol.rest.multiprocess import server as multiprocess_server

logger = logging.getLogger("perf_predictor")


@dataclass(frozen=True)
class GRPCSettings:
    port: int
    max_threads: int
    grace_period: int
    options: dict  # KServe's parsed flags: the server reads its message size limits from them
    native: bool = False  # grpc_native.py's server instead of KServe's grpcio server
    drain_s: int = 0


class RESTAndGRPCServer(rest_server.RESTServer):
    """KServe's REST server for one worker process, with a gRPC server on the same event loop.

    KServe pickles this object into each spawned worker and calls `run` there."""

    def __init__(self, *args, grpc: GRPCSettings, **kwargs):
        super().__init__(*args, **kwargs)
        self.grpc = grpc

    def run(self, sockets: Optional[list] = None) -> None:
        from . import grpc_fastpath
        from .grpc_native import NativeGRPCServer

        if self.grpc.native:
            grpc_server = NativeGRPCServer(self.grpc.port, reuse_port=True, drain_s=self.grpc.drain_s).use(
                self.dataplane, self.model_repository_extension, self.grpc.grace_period)
        else:
            grpc_fastpath.install()  # in this process: KServe's gRPC server builds our servicer
            grpc_server = GRPCServer(self.grpc.port, self.dataplane, self.model_repository_extension,
                                     kwargs=self.grpc.options, grace_period=self.grpc.grace_period)
        self._server.__class__ = _with_grpc(type(self._server), grpc_server, self.grpc.max_threads)
        super().run(sockets=sockets)


def _with_grpc(server_class: type, grpc_server, max_threads: int) -> type:
    from .grpc_front import DrainFirst

    # the native front drains like the single process: GOAWAY on every connection, then REST and gRPC
    # keep serving for its drain time before this worker stops
    drain_first = DrainFirst(grpc_server) if hasattr(grpc_server, "drain") else None

    class ServerWithGRPC(server_class):
        def handle_exit(self, sig, frame) -> None:
            if drain_first is None:
                server_class.handle_exit(self, sig, frame)
            else:
                drain_first(server_class.handle_exit, self, sig, frame)

        async def serve(self, sockets=None) -> None:
            grpc_task = asyncio.get_running_loop().create_task(grpc_server.start(max_threads))

            def grpc_stopped(task: asyncio.Task) -> None:
                if not task.cancelled() and task.exception() is not None:
                    # as in KServe's single process, where a gRPC server that cannot start stops it all
                    logger.error("gRPC server failed in worker %d: %s", os.getpid(), task.exception())
                    self.should_exit = True

            grpc_task.add_done_callback(grpc_stopped)
            try:
                await super().serve(sockets=sockets)
            finally:
                await grpc_server.stop()  # (done already, unless REST failed to start)
                grpc_task.cancel()

        async def shutdown(self, sockets=None) -> None:
            # beside REST's own, within the same grace period; here, because uvicorn re-raises the
            # signal as soon as serve() returns, which ends this process before any `finally`
            await asyncio.gather(super().shutdown(sockets=sockets), grpc_server.stop())

    return ServerWithGRPC


def install(grpc: GRPCSettings) -> None:
    """Before ModelServer.start, in the parent, which must then not start its own gRPC server."""
    multiprocess_server.RESTServer = functools.partial(RESTAndGRPCServer, grpc=grpc)
