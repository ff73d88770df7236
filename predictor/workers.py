"""`--workers N`: every worker process serves gRPC beside REST.

KServe 0.21 starts N uvicorn worker processes for REST but its gRPC server in the parent only, so gRPC
would have one process's share of the machine whatever N was. Here the parent starts no gRPC server;
each worker runs one (the native server, or KServe's grpcio server with our servicer) on its own event
loop beside uvicorn, all bound to the same port with SO_REUSEPORT, and the kernel spreads connections
over them. One connection still lands on one worker, as it would on one pod: clients that open
several connections (or a mesh proxy in front) get all the workers.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass
from typing import Optional

from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest.multiprocess import server as multiprocess_server

from . import connections, rest

logger = logging.getLogger("perf_predictor")


@dataclass(frozen=True)
class GRPCSettings:
    port: int
    max_threads: int
    grace_period: int
    options: dict  # KServe's parsed flags: the server reads its message size limits from them
    native: bool = False  # grpc_server.py's server instead of KServe's grpcio server
    drain_s: int = 0


class RESTAndGRPCServer(rest.RESTServer):
    """The REST server of one worker process, with a gRPC server on the same event loop.

    KServe pickles this object into each spawned worker and calls `run` there."""

    def __init__(self, *args, grpc: GRPCSettings, **kwargs):
        super().__init__(*args, **kwargs)
        self.grpc = grpc

    def run(self, sockets: Optional[list] = None) -> None:
        from . import grpc_infer
        from .grpc_server import NativeGRPCServer

        if self.grpc.native:
            grpc_server = NativeGRPCServer(self.grpc.port, reuse_port=True, drain_s=self.grpc.drain_s).use(
                self.dataplane, self.model_repository_extension, self.grpc.grace_period)
        else:
            grpc_infer.use_forecast_servicer()
            grpc_server = GRPCServer(self.grpc.port, self.dataplane, self.model_repository_extension,
                                     kwargs=self.grpc.options, grace_period=self.grpc.grace_period)
        self._server.__class__ = _with_grpc(type(self._server), grpc_server, self.grpc.max_threads)
        super().run(sockets=sockets)


def _with_grpc(server_class: type, grpc_server, max_threads: int) -> type:
    from .grpc_server import DrainFirst

    # the native server drains like the single process: GOAWAY on every connection, then REST and gRPC
    # keep serving for its drain time before this worker stops
    drain_first = DrainFirst(grpc_server) if hasattr(grpc_server, "drain") else None

    class ServerWithGRPC(server_class):
        def handle_exit(self, sig, frame) -> None:
            if drain_first is None:
                server_class.handle_exit(self, sig, frame)
            else:
                connections.start_draining(self.server_state.connections)  # REST replies say Connection: close
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


def install(grpc: Optional[GRPCSettings]) -> None:
    """Before ModelServer.start, in the parent: the REST server each worker runs (with gRPC beside it
    when `grpc` is given; the parent must then not start its own gRPC server)."""
    multiprocess_server.RESTServer = (rest.RESTServer if grpc is None
                                      else functools.partial(RESTAndGRPCServer, grpc=grpc))
