"""The native gRPC front's HTTP/2 session under a coverage-guided fuzzer (atheris, libFuzzer's engine),
and the replay of a corpus of such inputs (tests/test_h2_fuzz_corpus.py).

One input is one client connection: records of [kind, length (2 bytes, big-endian), payload]. Kinds 0-2
hand the payload to the connection as one read, after the client preface; 3 sends the final GOAWAY (the
server stopping, or the connection idle); 4 answers the calls held back so far; 5 starts a drain (the
GOAWAY notice of SIGTERM); 6 stops or resumes the client's reading; 7 runs the stall sweep as if its
timeout had passed. The bytes go through grpc_server.Connection, the protocol
the server's event loop uses, into predictor._h2 (libnghttp2 under _h2.c): the same calls, in the same
order, with a transport that keeps what is written. Calls on streams 1, 9, 17... go to the server's real
`call` (gRPC framing, decompression, the ModelInfer message; no model is registered, so NOT_FOUND); the
others get a reply of their own size times three, at once or held back until a kind-4 record.

After every input: the connection is gone from the server and holds no stream and no request byte.

  python -m tests.fuzz.h2_fuzz --seconds 600 WORK_DIR tests/fuzz/corpus/h2   fuzz (scripts/fuzz-h2.sh)
  python -m tests.fuzz.h2_fuzz --replay tests/fuzz/corpus/h2                  replay: one JSON line per file
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FEED, STOP, ANSWER, DRAIN, PAUSE, SWEEP = 0, 3, 4, 5, 6, 7


def records(data: bytes):
    """(kind, payload) pairs; a record cut short by the end of the input keeps what there is."""
    at = 0
    while at + 3 <= len(data):
        kind, length = data[at] & 7, int.from_bytes(data[at + 1:at + 3], "big")
        yield (FEED if kind < STOP else kind), data[at + 3:at + 3 + length]
        at += 3 + length


def record(kind: int, payload: bytes = b"") -> bytes:
    """The inverse of records() for one record; payloads over 65,535 bytes become several reads."""
    if len(payload) <= 0xFFFF:
        return bytes([kind]) + len(payload).to_bytes(2, "big") + payload
    return b"".join(record(kind, payload[i:i + 0xFFFF]) for i in range(0, len(payload), 0xFFFF))


class Handle:
    def cancel(self) -> None:
        pass


class Loop:
    """What Connection asks of the event loop: timers, which are never due within one input."""

    def call_later(self, delay, callback, *args) -> Handle:
        return Handle()


class Socket:
    def setsockopt(self, *args) -> None:
        pass


class Transport:
    def __init__(self):
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.written += data

    def get_extra_info(self, name: str):
        return Socket() if name == "socket" else None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close


def server_frames(data: bytes):
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        yield data[3], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9:9 + length]
        data = data[9 + length:]


class Counted(logging.Handler):
    """Counts the server's log records at or above a level (and writes none)."""

    def __init__(self, level: int):
        super().__init__(level)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class Harness:
    """One grpc_server.NativeGRPCServer, never started: connections are made and fed by hand."""

    def __init__(self):
        from kserve.model_repository import ModelRepository

        from predictor import grpc_server  # after the sanitized _h2 is chosen (tests/h2_sanitized)

        class Server(grpc_server.NativeGRPCServer):
            def call(server, connection, stream_id, stream):
                self.calls += 1
                if stream_id % 8 == 1:
                    return grpc_server.NativeGRPCServer.call(server, connection, stream_id, stream)
                reply = grpc_server.Reply(0, "", grpc_server.grpc_infer.framed(b"r" * (3 * stream.size)))
                if stream_id % 8 == 3:
                    connection.reply(stream_id, reply)
                else:
                    self.held.append((connection, stream_id, reply))

        self.grpc_server = grpc_server
        self.server = Server(0)
        self.server.registry = ModelRepository()  # KServe's, with no model in it
        self.server.loop = Loop()
        self.held: list = []
        self.calls = 0
        self.warnings = Counted(logging.WARNING)
        log = logging.getLogger("perf_predictor")
        log.addHandler(self.warnings)
        log.propagate = False

    def run(self, data: bytes) -> dict:
        """One connection through `data`; what the server wrote, summed up."""
        self.calls, self.warnings.count = 0, 0
        connection = self.grpc_server.Connection(self.server)
        transport = Transport()
        connection.connection_made(transport)
        fed = False
        for kind, payload in records(data):
            if transport.closing:
                break
            if kind == FEED:
                connection.data_received((b"" if fed else PREFACE) + payload)
                fed = True
            elif kind == STOP:
                connection.goaway()
            elif kind == ANSWER:
                held, self.held = self.held, []
                for conn, stream_id, reply in held:
                    conn.reply(stream_id, reply)
            elif kind == DRAIN:
                connection.shutdown_notice()
            elif kind == PAUSE:
                if connection.paused:
                    connection.resume_writing()
                else:
                    connection.pause_writing()
            elif kind == SWEEP and connection.streams:
                connection.expire(time.monotonic() + self.grpc_server.STALL_TIMEOUT_S + 1)
            assert connection.buffered == self.server.buffered >= 0, (connection.buffered, self.server.buffered)
        closed_by_server = transport.closing
        connection.connection_lost(None)
        self.held.clear()
        assert self.server.connections == set() and not connection.streams, "a connection outlived its close"
        assert self.server.buffered == 0 == connection.buffered, f"{self.server.buffered} request bytes still held"
        frames = list(server_frames(bytes(transport.written)))
        goaway = [payload for kind, _, payload in frames if kind == 7]
        return {"closed": closed_by_server, "written": len(transport.written),
                "goaway": [int.from_bytes(p[4:8], "big") for p in goaway],
                "resets": sorted({int.from_bytes(p[:4], "big") for kind, _, p in frames if kind == 3}),
                "replies": sum(1 for kind, _, _ in frames if kind == 1), "calls": self.calls,
                "warnings": self.warnings.count}


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def replay(corpus: Path) -> None:
    harness = Harness()
    for path in sorted(p for p in corpus.iterdir() if p.is_file()):
        print(json.dumps({"name": path.name, **harness.run(path.read_bytes())}), flush=True)


def fuzz(seconds: int, dirs: list[str], extra: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["predictor", "tests.fuzz"]):
        harness = Harness()
    runs, started, last = 0, time.monotonic(), 0.0

    def one_input(data: bytes) -> None:
        nonlocal runs, last
        harness.run(data)
        runs += 1
        now = time.monotonic() - started
        if now - last >= 30:  # the process's memory now (libFuzzer's rss is the peak so far)
            last = now
            print(f"h2_fuzz: {runs} runs, {now:.0f} s, rss {rss_mib():.0f} MiB", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10",
                   "-print_final_stats=1", *extra, *dirs], one_input)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replay", type=Path, help="run every file of this corpus once; one JSON line each")
    parser.add_argument("--seconds", type=int, default=600, help="the fuzzing budget")
    parser.add_argument("dirs", nargs="*", help="libFuzzer's corpus directories: the first gets new inputs")
    args, extra = parser.parse_known_args()
    if args.replay:
        replay(args.replay)
    else:
        fuzz(args.seconds, args.dirs, extra)


if __name__ == "__main__":
    main()
