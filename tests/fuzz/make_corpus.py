"""Writes the seed corpus of tests/fuzz/h2_fuzz.py: one file per way a client can abuse an HTTP/2
connection, plus ordinary calls the fuzzer mutates from. Deterministic: running it again writes the same
bytes. tests/test_h2_fuzz_corpus.py replays these files and checks what the server did with the attacks.
The corpus also keeps small inputs the fuzzer found (found-*: scripts/fuzz-h2.sh writes them to
build/h2-fuzz/corpus), which this script leaves alone.

  python -m tests.fuzz.make_corpus [OUT_DIR]     default tests/fuzz/corpus/h2
"""
from __future__ import annotations

import random
import struct
import sys
import zlib
from pathlib import Path

from tests.fuzz.h2_fuzz import ANSWER, DRAIN, FEED, PAUSE, STOP, SWEEP, record
from tests.test_h2_session import CALL, END_HEADERS, END_STREAM, frame, header_block, hpack_int

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
PADDED, ACK = 0x8, 0x1
CANCEL = 8
START = frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0)


def message(body: bytes = b"\x0a\x01m", compressed: bool = False) -> bytes:
    return (b"\x01" if compressed else b"\x00") + struct.pack(">I", len(body)) + body


def call(stream_id: int, body: bytes = message(), fields=CALL, end: bool = True) -> bytes:
    return (frame(HEADERS, END_HEADERS, stream_id, header_block(fields))
            + frame(DATA, END_STREAM if end else 0, stream_id, body))


def indexed(fields=CALL) -> tuple[bytes, bytes]:
    """Two HPACK blocks of the same fields: the first adds them to the dynamic table (RFC 7541 6.2.1),
    the second is one byte a field, so a flood of calls stays small on disk."""
    first = b"".join(b"\x40" + hpack_int(len(n)) + n + hpack_int(len(v)) + v for n, v in fields)
    return first, bytes(0x80 | (61 + len(fields) - i) for i in range(len(fields)))


def feed(data: bytes) -> bytes:
    return record(FEED, data)


def split(data: bytes, sizes) -> bytes:
    """The same bytes, read in pieces of the given sizes (cycled)."""
    out, at, i = b"", 0, 0
    while at < len(data):
        out += feed(data[at:at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return out


def seeds() -> dict[str, bytes]:
    rng = random.Random(21)
    first, again = indexed()
    calls = b"".join(call(i) for i in (1, 3, 5, 7))
    big = [(b"x-padding", b"p" * 20_000)]
    oversized = header_block(CALL + big)
    bomb_entry = b"\x40" + hpack_int(6) + b"x-bomb" + hpack_int(4000) + b"b" * 4000  # literal, indexed (62)
    bomb = header_block(CALL) + bomb_entry + b"\xbe" * 12_000  # 12,000 references: 48 MB of header list
    random_frames = b"".join(
        frame(rng.randrange(12), rng.randrange(256), rng.choice((0, 1, 3, 2**31 - 1, rng.randrange(2**31))),
              rng.randbytes(rng.choice((0, 1, 4, 5, 8, 9, rng.randrange(300)))))
        for _ in range(300))
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip of 16 MiB of zeros (16 kB): past the 8 MiB limit
    gzip_bomb = gz.compress(b"\0" * (16 << 20)) + gz.flush()
    return {
        "calls": feed(START + calls) + record(ANSWER),
        "calls-read-byte-by-byte": split(START + call(3) + call(5), [1]) + record(ANSWER),
        "calls-odd-reads": split(START + calls, [7, 1, 300, 2]) + record(ANSWER),
        "call-with-trailers": feed(START + frame(HEADERS, END_HEADERS, 3, header_block(CALL)) + frame(DATA, 0, 3, message())
                                   + frame(HEADERS, END_HEADERS | END_STREAM, 3, header_block([(b"x-trailer", b"1")]))),
        "call-padded": feed(START + frame(HEADERS, END_HEADERS | PADDED, 3, b"\x04" + header_block(CALL) + b"\0" * 4)
                            + frame(DATA, END_STREAM | PADDED, 3, b"\x10" + message() + b"\0" * 16)),
        "call-pad-too-long": feed(START + frame(DATA, PADDED, 1, b"\xff" + b"\0" * 4)),
        "call-gzip-bomb": feed(START + call(1, message(gzip_bomb, compressed=True),
                                            CALL + [(b"grpc-encoding", b"gzip")])),
        "call-not-post": feed(START + call(3, fields=[(b":method", b"GET")] + CALL[1:])),
        "call-not-grpc": feed(START + call(3, fields=CALL[:4] + [(b"content-type", b"text/plain")] + CALL[5:])),
        "call-bad-timeout": feed(START + call(1, fields=CALL + [(b"grpc-timeout", b"999999999S")])),
        "call-unknown-method": feed(START + call(1, fields=[CALL[0], CALL[1], (b":path", b"/x/y")] + CALL[3:])),
        "held-then-drain": feed(START + call(5)) + record(DRAIN) + record(ANSWER) + feed(call(7)) + record(ANSWER),
        "held-then-stop": feed(START + call(5) + call(7)) + record(STOP) + record(ANSWER) + feed(call(9)),
        "held-then-client-goaway": feed(START + call(5) + frame(GOAWAY, 0, 0, struct.pack(">II", 5, 0))) + record(ANSWER),
        "reader-pauses": feed(START) + record(PAUSE) + feed(call(3)) + record(PAUSE) + feed(frame(PING, 0, 0, b"8bytes!!")),
        "stall-mid-request": feed(START + call(3, end=False)) + record(SWEEP) + feed(call(5)) + record(ANSWER),
        "random-frames": feed(START + random_frames),
        "oversized-headers-split-across-reads": split(START + frame(HEADERS, END_STREAM, 3, oversized[:16_000])
                                                      + frame(CONTINUATION, END_HEADERS, 3, oversized[16_000:]), [1000]),
        "hpack-bomb": feed(START + frame(HEADERS, END_STREAM, 3, bomb[:16_000])
                           + frame(CONTINUATION, END_HEADERS, 3, bomb[16_000:])),
        "hpack-table-size-update-too-large": feed(START + frame(HEADERS, END_HEADERS | END_STREAM, 3,
                                                                b"\x3f" + hpack_int(2**31, 5)[1:] + header_block(CALL))),
        "continuation-flood": feed(START + frame(HEADERS, 0, 3, header_block(CALL))
                                   + b"".join(frame(CONTINUATION, 0, 3) for _ in range(100))),
        "rapid-reset": feed(START + b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, again if i else first)
                                             + frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", CANCEL))
                                             for i in range(1100))),
        "streams-over-the-limit": feed(START + b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, again if i else first)
                                                        for i in range(1001))),
        "window-update-overflow-connection": feed(START + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1))),
        "window-update-overflow-stream": feed(START + frame(HEADERS, END_HEADERS, 3, header_block(CALL))
                                              + frame(WINDOW_UPDATE, 0, 3, struct.pack(">I", 2**31 - 1)) * 2),
        "window-update-zero": feed(START + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))),
        "zero-window-then-stall": feed(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0)) + call(3, message(b"q" * 1000)))
                                  + record(SWEEP) + feed(frame(WINDOW_UPDATE, 0, 3, struct.pack(">I", 1 << 20))),
        "zero-window-then-open": feed(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0)) + call(3, message(b"q" * 3000)))
                                 + feed(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31 - 1))),
        "initial-window-too-large": feed(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31))),
        "huge-settings": feed(frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", rng.randrange(1, 0x10000),
                                                                         rng.randrange(2**31)) for _ in range(2730)))),
        "settings-frame-too-large": feed(frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 1) * 3000)),
        "settings-flood": feed(START + frame(SETTINGS, 0, 0) * 1100),
        "ping-flood": feed(START + frame(PING, 0, 0, b"12345678") * 1100),
        "ping-flood-unread": feed(START) + record(PAUSE) + feed(frame(PING, 0, 0, b"12345678") * 110) * 10,
        "priority-self-dependency": feed(START + frame(PRIORITY, 0, 3, struct.pack(">IB", 3, 16)) + call(3)),
        "reset-idle-stream": feed(START + frame(RST_STREAM, 0, 9, struct.pack(">I", CANCEL))),
        "data-on-closed-stream": feed(START + call(3) + frame(DATA, END_STREAM, 3, message())),
        "not-http2": record(FEED + 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus" / "h2")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
