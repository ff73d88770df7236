"""predictor._h2 (the compiled HTTP/2 session under the native gRPC front) fed HTTP/2 bytes, and the
front's byte accounting when a client hangs up mid-call. The end-to-end behaviour, through real
clients, is in test_grpc_server.py. grpc_server itself runs in a child process: kserve's protobuf
messages cannot share a process with tritonclient's, which other test modules import."""
from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from .conftest import REPO

h2 = pytest.importorskip("predictor._h2", reason="not built; test_grpc_front checks that it is")
INFER = b"/inference.GRPCInferenceService/ModelInfer"
WANTED = (b":method", b":path", b"content-type", b"grpc-encoding", b"grpc-timeout")
MAX_HEADER_BYTES, MAX_STREAMS = 16 << 10, 1000
SETTINGS_SENT = {3: MAX_STREAMS, 4: 4 << 20, 6: MAX_HEADER_BYTES}
OK_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
OK_TRAILERS = ((b"grpc-status", b"0"),)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, END_HEADERS = 0x1, 0x4
CALL = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER), (b":authority", b"test"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"user-agent", b"test/1")]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 | 128)
        value //= 128
    return bytes(out + [value])


def header_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """Literal fields without indexing, new names, no Huffman (RFC 7541 6.2.2)."""
    return b"".join(b"\x00" + hpack_int(len(n)) + n + hpack_int(len(v)) + v for n, v in fields)


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9:9 + length]))
        data = data[9 + length:]
    return out


def session() -> "h2.Session":
    return h2.Session(WANTED, MAX_HEADER_BYTES, SETTINGS_SENT)


def test_a_call_comes_out_as_events_and_its_reply_as_frames():
    s = session()
    sent = frames(s.send())
    assert sent[0][0] == SETTINGS and struct.unpack(">HI", sent[0][3][:6]) == (3, MAX_STREAMS)

    body = b"\x00\x00\x00\x00\x03abc"
    events = s.recv(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, header_block(CALL))
                    + frame(DATA, 0, 1, body[:4]) + frame(DATA, END_STREAM, 1, body[4:]))
    assert [e[:2] for e in events] == [(h2.HEADERS, 1), (h2.DATA, 1), (h2.DATA, 1), (h2.END, 1)]
    _, _, fields, header_bytes, end = events[0]
    assert fields == {b":method": b"POST", b":path": INFER, b"content-type": b"application/grpc"}
    assert header_bytes == sum(len(n) + len(v) + 32 for n, v in CALL) and end is False
    assert events[1][2] + events[2][2] == body
    assert s.take() is None

    reply = b"\x00\x00\x00\x00\x02ok"
    assert s.respond(1, OK_HEADERS, reply, OK_TRAILERS) == 0
    out = [f for f in frames(s.send()) if f[0] != SETTINGS]  # and the SETTINGS ack
    assert [(kind, flags & END_STREAM, stream) for kind, flags, stream, _ in out] == [
        (HEADERS, 0, 1), (DATA, 0, 1), (HEADERS, END_STREAM, 1)]
    assert out[1][3] == reply
    assert b"grpc-status" in out[2][3] or len(out[2][3]) < 16  # literal or HPACK-indexed
    assert s.take() == [(h2.CLOSED, 1, 0)]  # the stream ended with the trailers just sent
    s.close()
    with pytest.raises(ValueError):
        s.recv(b"")


def test_a_reply_larger_than_the_window_waits_for_window_updates():
    s = session()
    s.recv(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, header_block(CALL)))
    s.send()
    reply = bytes(range(256)) * 1024  # 256 KiB; the client's window is HTTP/2's default, 64 KiB - 1
    assert s.respond(1, OK_HEADERS, reply, OK_TRAILERS) == 0
    first = b"".join(p for kind, _, _, p in frames(s.send()) if kind == DATA)
    assert len(first) == 65535 and s.take() is None
    more = b""
    while len(first) + len(more) < len(reply):
        s.recv(frame(8, 0, 0, struct.pack(">I", 1 << 20)) + frame(8, 0, 1, struct.pack(">I", 1 << 20)))
        more += b"".join(p for kind, _, _, p in frames(s.send()) if kind == DATA)
    assert first + more == reply
    assert s.take() == [(h2.CLOSED, 1, 0)]


def test_a_reply_the_window_lets_out_at_once_comes_out_whole_from_one_send():
    """send() gathers every frame libnghttp2 has ready (a 16 kB DATA frame at a time) into one bytes,
    growing it by doubling: the body comes out whole and in order, across many of those growths."""
    s = session()
    wide = struct.pack(">HI", 4, 0x7FFFFFFF)  # the client's windows opened all the way
    s.recv(PREFACE + frame(SETTINGS, 0, 0, wide) + frame(8, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535))
           + frame(HEADERS, END_HEADERS | END_STREAM, 1, header_block(CALL)))
    s.send()
    reply = bytes(range(251)) * (12 << 10) + b"tail"  # 3 MiB and a bit, not a multiple of a frame
    assert s.respond(1, OK_HEADERS, reply, OK_TRAILERS) == 0
    out = frames(s.send())
    assert b"".join(p for kind, _, _, p in out if kind == DATA) == reply
    assert out[-1][0] == HEADERS and out[-1][1] & END_STREAM  # the trailers, in the same send()
    assert s.send() == b"" and s.take() == [(h2.CLOSED, 1, 0)]


def test_oversized_headers_are_counted_but_not_kept():
    s = session()
    big = [(b"x-padding", b"p" * 20_000)]
    block = header_block(CALL + big + [(b"grpc-timeout", b"1S")])  # over one frame: HEADERS, then CONTINUATION (type 9)
    events = s.recv(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_STREAM, 1, block[:16_000])
                    + frame(9, END_HEADERS, 1, block[16_000:]))
    (kind, stream_id, fields, header_bytes, end), = events
    assert header_bytes > MAX_HEADER_BYTES and end is True
    assert b":path" in fields and b"grpc-timeout" not in fields  # past the cap nothing more is held


def test_replies_the_session_cannot_send_are_refused_when_given():
    s = session()
    s.recv(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, header_block(CALL)))
    with pytest.raises(TypeError):  # checked now, not when libnghttp2 asks for the trailers mid-send
        s.respond(1, OK_HEADERS, b"x", ((b"grpc-status", "0"),))
    with pytest.raises(TypeError):
        s.respond(1, list(OK_HEADERS), b"x", OK_TRAILERS)
    assert s.respond(1, OK_HEADERS, b"x", OK_TRAILERS) == 0
    with pytest.raises(ValueError, match="already has a reply"):
        s.respond(1, OK_HEADERS, b"y", OK_TRAILERS)
    s.send()
    assert s.take() == [(h2.CLOSED, 1, 0)]
    body = b"z" * 100
    refs = sys.getrefcount(body)
    assert s.respond(1, OK_HEADERS, body, OK_TRAILERS) == -510  # closed: STREAM_CLOSED, nothing kept
    assert sys.getrefcount(body) == refs
    assert h2.Session.__new__(h2.Session).take() is None  # never initialised: no crash


def test_bytes_that_are_not_http2_raise():
    s = session()
    with pytest.raises(h2.Error, match="(?i)bad client magic"):
        s.recv(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


CALLS_THAT_STOP = """
import asyncio, struct
from tests.test_h2_session import (CALL, DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, frame, frames,
                                   header_block)
from predictor import grpc_server

grpc_server.STALL_TIMEOUT_S, grpc_server.SWEEP_S = 0.5, 0.1  # 60 s and 5 s in service
PARTIAL = (PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, header_block(CALL))
           + frame(DATA, 0, 1, b"\\x00\\x00\\x00\\x10\\x00" + b"x" * 995))  # 1,000 of 4,101 bytes


async def until(condition, seconds=5.0):
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


async def scenario():
    sock = grpc_server.bind(0)
    server = grpc_server.NativeGRPCServer(sock.getsockname()[1], sock=sock)
    serving = asyncio.create_task(server.start())
    await until(lambda: server._server is not None)

    # a client that hangs up mid-request
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(PARTIAL)
    await until(lambda: server.buffered == 1000)
    held = server.buffered
    writer.close()
    await until(lambda: not server.connections)
    print("hang-up", held, server.buffered)

    # a client that stays but sends no more of its request: the call is reset, its bytes released
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(PARTIAL)
    await until(lambda: server.buffered == 1000)
    received = b""
    while not any(kind == 3 for kind, _, _, _ in frames(received)):  # RST_STREAM
        received += await asyncio.wait_for(reader.read(65536), 5)
    code = next(p for kind, _, _, p in frames(received) if kind == 3)
    print("stalled", server.buffered, int.from_bytes(code, "big"), len(server.connections))
    writer.close()
    await until(lambda: not server.connections)

    # a client that takes no reply: past its HTTP/2 window the call is reset; past the socket's buffer
    # (windows opened wide) the connection is cut off
    def big_reply(connection, stream_id, stream):
        connection.reply(stream_id, grpc_server.Reply(0, "", grpc_server.grpc_infer.framed(b"r" * (64 << 20))))
    server.call = big_reply
    for wide in (False, True):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        settings = struct.pack(">HI", 4, 0x7FFFFFFF) if wide else b""
        window = frame(8, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535)) if wide else b""
        writer.write(PREFACE + frame(SETTINGS, 0, 0, settings) + window
                     + frame(HEADERS, END_HEADERS, 1, header_block(CALL)) + frame(DATA, END_STREAM, 1, b"\\0" * 5))
        if not wide:
            received = b""
            while not any(kind == 3 for kind, _, _, _ in frames(received)):  # RST_STREAM
                received += await asyncio.wait_for(reader.read(1 << 20), 5)
            print("unread", sum(len(p) for kind, _, _, p in frames(received) if kind == DATA))
            writer.close()
        else:
            print("unread, wide", await until(lambda: not server.connections))
    await server.stop()
    await serving

asyncio.run(scenario())
"""


def test_calls_that_stop_midway_give_back_their_bytes():
    """Bytes held for a request that never ends count against the per-process cap; kept, they would
    one day refuse every call. Given back when the client hangs up, and when it stays but stalls (the
    call is reset with CANCEL; the connection stays). A reply nobody takes is dropped the same way, and
    a client that reads nothing at all is cut off."""
    run = subprocess.run([sys.executable, "-c", CALLS_THAT_STOP], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["hang-up 1000 0", "stalled 0 8 1", "unread 65535", "unread, wide True"]
