"""The ASGI plumbing of the REST endpoints answered ahead of FastAPI (rest.py's v2 infer route and
timeseries.py): read a request's body within a size limit, send one reply."""
from __future__ import annotations

import asyncio
from typing import Optional

BINARY_HEADER = b"inference-header-content-length"


class BodyTooLarge(Exception):
    """The request's Content-Length, or the bytes it has sent so far, pass the limit."""

    def __init__(self, limit: int, size: Optional[int] = None):
        told = f"is {size} bytes" if size is not None else "is larger"
        super().__init__(f"the request body {told}; this server takes at most {limit} bytes (--max_body_bytes)")


def content_length(scope) -> Optional[int]:
    """The request's Content-Length, None when absent (chunked) or not a number (the server refused it)."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def body_chunks(receive, limit: int, scope):
    """An ASGI request's body as it arrives, refused (BodyTooLarge) as soon as its Content-Length or
    the bytes received pass `limit`."""
    declared = content_length(scope)
    if declared is not None and declared > limit:
        if declared <= LINGER_BYTES and not expects_continue(scope):
            await discard(receive)
        raise BodyTooLarge(limit, declared)
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await discard(receive)
            raise BodyTooLarge(limit)
        yield chunk
        if not message.get("more_body", False):
            return


async def read_body(receive, limit: int, scope) -> bytes:
    """The whole body, within `limit` (body_chunks): at most `limit` bytes are ever held."""
    return b"".join([chunk async for chunk in body_chunks(receive, limit, scope)])


# The kernel resets a connection closed with unread bytes, and a client still sending then loses
# the reply: before a 413 closes the connection, up to this much of the rest is read and dropped.
LINGER_BYTES = 4 << 20
LINGER_S = 1.0


def expects_continue(scope) -> bool:
    """The client waits for 100 Continue before it sends the body (curl does for large bodies)."""
    return any(key == b"expect" and value.lower() == b"100-continue" for key, value in scope["headers"])


async def discard(receive) -> None:
    """Reads and drops what the client still sends, within LINGER_BYTES and LINGER_S."""
    budget, deadline = LINGER_BYTES, asyncio.get_running_loop().time() + LINGER_S
    while budget > 0:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(receive(), remaining) if remaining > 0 else None
        except asyncio.TimeoutError:
            return
        if message is None or message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


async def reply(send, status: int, body: bytes, json_length: Optional[int] = None, extra_headers: tuple = ()) -> None:
    """A JSON body, or with `json_length` a v2 binary-tensor body whose JSON header is that long."""
    headers = [(b"content-length", str(len(body)).encode())]
    if json_length is None:
        headers.append((b"content-type", b"application/json"))
    else:
        headers += [(b"content-type", b"application/octet-stream"), (BINARY_HEADER, str(json_length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
    await send({"type": "http.response.body", "body": body})


# A 413 is sent before the rest of the body is read: the connection closes after it, so the unread
# bytes are never taken for the next request.
CLOSE = ((b"connection", b"close"),)
