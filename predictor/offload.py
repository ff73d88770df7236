"""Large v2 JSON bodies are decoded in a helper process, off the event loop and off its GIL.

pysimdjson holds the GIL for the whole parse: a body near the size limit (34 MiB of numbers) takes
hundreds of milliseconds, during which a thread would not help and the event loop (health checks,
every other request, the gRPC front) would stand still. A body whose JSON is at least OFFLOAD_BYTES
goes to one helper process per server process, started on first use; smaller ones are decoded
inline, where a process hop would cost more than it saves. A body that announces its size is
written to a temporary file as it arrives and the helper reads it from there, so the server never
copies the whole body at once (on a busy machine one 34 MiB copy alone holds the GIL for 100+ ms). The helper runs the same codec, so the
answers are the same; a parser crash on a hostile body takes down the helper, never the server: the
request gets a 500, the failure is logged, and the next large body starts a new helper. The decoded
windows come back in a temporary .npy file that the server maps rather than copies.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

import numpy as np

from . import codec
from .asgi import body_chunks
from .contract import HistoryLength

logger = logging.getLogger("perf_predictor")
OFFLOAD_BYTES = 1 << 20
# Bodies spooled at once per server process (each up to the body limit, plus its decoded windows, in
# the chart's 256 MiB /tmp): a request beyond waits for a slot before its body is read.
SPOOL_SLOTS = 2


class DecoderProcess:
    def __init__(self):
        self._pool: Optional[ProcessPoolExecutor] = None
        self._slots: Optional[asyncio.Semaphore] = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:  # spawn: the server has threads, which fork would copy half-way
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def decode_v2_body(self, body: bytes, json_length: Optional[int],
                             need: HistoryLength) -> tuple[np.ndarray, codec.V2Reply]:
        if (len(body) if json_length is None else json_length) < OFFLOAD_BYTES:
            return codec.decode_v2_body(body, json_length, need)
        return await self._run(body, json_length, need)

    async def decode_streamed(self, receive, limit: int, scope, need: HistoryLength) -> tuple[np.ndarray, codec.V2Reply]:
        """A JSON body spooled to a file as it arrives (`spool`), then decoded by the helper; at most
        SPOOL_SLOTS at once."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(SPOOL_SLOTS)
        async with self._slots:
            path = await spool(receive, limit, scope)
            try:
                return await self._run(path, None, need)
            finally:
                _remove(path)

    async def _run(self, body, json_length: Optional[int], need: HistoryLength) -> tuple[np.ndarray, codec.V2Reply]:
        pool = self._executor()
        try:
            windows, reply = await asyncio.get_running_loop().run_in_executor(pool, decode, body, json_length, need)
        except BrokenProcessPool:
            logger.error("the JSON decoder process died while decoding a request body; the next large body "
                         "starts a new one")
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise
        try:  # mapped, not read: the pages come in as the forecast reads them
            return np.asarray(np.load(windows, mmap_mode="c")), reply
        finally:
            _remove(windows)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def spools(scope, json_length: Optional[int]) -> bool:
    """Whether the body goes to a file for the helper: a JSON body announced at OFFLOAD_BYTES or more."""
    from .asgi import content_length

    declared = content_length(scope)
    return json_length is None and declared is not None and declared >= OFFLOAD_BYTES


async def spool(receive, limit: int, scope) -> str:
    """The body written to a temporary file as it arrives (within `limit`, as asgi.read_body); its path."""
    fd, path = tempfile.mkstemp(prefix="perf-predictor-body-")
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in body_chunks(receive, limit, scope):
                out.write(chunk)
    except BaseException:
        _remove(path)
        raise
    return path


def decode(body, json_length: Optional[int], need: HistoryLength) -> tuple[str, codec.V2Reply]:
    """In the helper process: a body (bytes, or the path of a spooled JSON body) decoded, its windows
    written to a .npy file whose path is returned (an 11 MB array pickled back would be copied while
    holding the server's GIL)."""
    if isinstance(body, str):
        with open(body, "rb") as spooled:
            body = spooled.read()
    windows, reply = codec.decode_v2_body(body, json_length, need)
    fd, path = tempfile.mkstemp(prefix="perf-predictor-windows-", suffix=".npy")
    with os.fdopen(fd, "wb") as out:
        np.save(out, windows)
    return path, reply


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


decoder = DecoderProcess()  # one per server process: a pool does not travel to worker processes
