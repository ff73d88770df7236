"""The ASGI plumbing of the REST endpoints answered ahead of FastAPI (rest.py's v2 infer route and
timeseries.py): read a request's body, send one reply."""
from __future__ import annotations

from typing import Optional

BINARY_HEADER = b"inference-header-content-length"


async def read_body(receive) -> bytes:
    """An ASGI request's whole body."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def reply(send, status: int, body: bytes, json_length: Optional[int] = None, extra_headers: tuple = ()) -> None:
    """A JSON body, or with `json_length` a v2 binary-tensor body whose JSON header is that long."""
    headers = [(b"content-length", str(len(body)).encode())]
    if json_length is None:
        headers.append((b"content-type", b"application/json"))
    else:
        headers += [(b"content-type", b"application/octet-stream"), (BINARY_HEADER, str(json_length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]})
    await send({"type": "http.response.body", "body": body})
