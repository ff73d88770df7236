"""The REST port cuts off slow clients and caps its connections (predictor/connections.py), with real
sockets against a real server: short timeouts and a cap of 8 here."""
from __future__ import annotations

import json
import socket
import time

import pytest

from .conftest import MODEL_NAME, start_server, stop_server, wait_ready

HEADER_TIMEOUT, BODY_TIMEOUT, CAP = 1.0, 2.0, 8
INFER = f"/v2/models/{MODEL_NAME}/infer"


@pytest.fixture(scope="module")
def guarded(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory.mktemp("logs") / "server.log", "--header_timeout",
                       str(HEADER_TIMEOUT), "--body_timeout", str(BODY_TIMEOUT), "--max_connections", str(CAP))
    try:
        wait_ready(srv)
        yield srv
    finally:
        stop_server(srv)


def connect(srv) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)


def read_reply(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (a reset fails the test), and when."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic()


def read_one_reply(sock: socket.socket) -> bytes:
    """One reply on a keep-alive connection: its headers and content-length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def health(srv) -> bytes:
    with connect(srv) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return read_reply(sock)[0]


def test_a_silent_connection_is_closed(guarded):
    with connect(guarded) as sock:
        opened = time.monotonic()
        reply, closed = read_reply(sock)
    assert status_of(reply) == 408 and b'{"error":' in reply
    assert HEADER_TIMEOUT * 0.9 < closed - opened < HEADER_TIMEOUT + 2


def test_headers_one_byte_at_a_time_are_cut_off(guarded):
    with connect(guarded) as sock:
        opened = time.monotonic()
        sock.sendall(b"P")  # the request's first byte starts its header clock
        for byte in b"OST /v2/health/live HT":
            time.sleep(0.2)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        reply, closed = read_reply(sock)
    assert status_of(reply) == 408
    assert closed - opened < HEADER_TIMEOUT + 2


def test_a_content_length_then_silence_is_cut_off(guarded):
    """1 GiB announced is past the body limit: a 413 at once (docs/limits.md). 8 MiB is within it, and a
    body that then never comes is cut off after the body timeout."""
    with connect(guarded) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {1 << 30}\r\n\r\n".encode())
        sent = time.monotonic()
        reply, closed = read_reply(sock)
    assert status_of(reply) == 413 and closed - sent < BODY_TIMEOUT / 2
    with connect(guarded) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {8 << 20}\r\n\r\n".encode())
        sent = time.monotonic()
        reply, closed = read_reply(sock)
    assert status_of(reply) == 408
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"].startswith("the request body did not arrive")
    assert BODY_TIMEOUT * 0.9 < closed - sent < BODY_TIMEOUT + 2


def test_a_body_one_byte_at_a_time_is_cut_off(guarded):
    with connect(guarded) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: 1000\r\n\r\n".encode())
        sent = time.monotonic()
        sock.settimeout(0.5)
        reply = b""
        while not reply:  # a byte every 0.5 s: the body's timeout is for all of it, not between bytes
            try:
                sock.sendall(b" ")
                reply = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
        sock.settimeout(30)
        rest, closed = read_reply(sock)
    assert status_of(reply + rest) == 408
    assert closed - sent < BODY_TIMEOUT + 2


def test_headers_past_the_limit_get_431(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (20 << 10) + b"\r\n\r\n")
        reply, _ = read_reply(sock)
    assert status_of(reply) == 431 and reply.count(b"HTTP/1.1") == 1


def test_idle_connections_past_the_cap_make_room_for_health_checks(guarded):
    """2 * CAP connections that never send: each new one past the cap closes the one that has waited
    longest, so a health check on a new connection is still answered."""
    idle = [connect(guarded) for _ in range(2 * CAP)]
    try:
        time.sleep(0.2)
        assert status_of(health(guarded)) == 200
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except socket.timeout:
                pass
        assert closed >= CAP, f"only {closed} of {2 * CAP} idle connections were closed"
    finally:
        for sock in idle:
            sock.close()


def test_past_the_cap_with_every_connection_busy_new_requests_get_503(guarded):
    """CAP connections each in the middle of a request body cannot be closed for another: a new
    connection's request is answered 503 with Connection: close (no reset); once the bodies time out,
    health answers again."""
    busy = [connect(guarded) for _ in range(CAP)]
    try:
        for sock in busy:
            sock.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{".encode())
        time.sleep(0.3)
        reply = health(guarded)
        assert status_of(reply) == 503 and b"connection: close" in reply.lower()
        assert b"retry-after: 1" in reply.lower()
        time.sleep(BODY_TIMEOUT + 0.5)
        assert status_of(health(guarded)) == 200
    finally:
        for sock in busy:
            sock.close()


def test_keep_alive_still_works(guarded):
    with connect(guarded) as sock:
        for _ in range(3):
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            reply = read_one_reply(sock)
            assert status_of(reply) == 200 and b"connection: close" not in reply.lower()
            time.sleep(HEADER_TIMEOUT * 1.2)  # idle between requests is the keep-alive timeout's, not the header's
