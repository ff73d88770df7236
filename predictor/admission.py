"""Overload: the inference requests one process holds at once are bounded, and one past the bound is
refused at once (REST 503 `{"error": ...}` with Retry-After, gRPC UNAVAILABLE) instead of queueing.

A request is held from when its body has been read (REST) or its message has arrived (gRPC) until its
reply: it is decoded, queued for the micro-batcher, predicted and encoded meanwhile. A REST request past
the bound is refused by its connection on its headers (connections.py), its body dropped unread by
anything; the application looks before reading the body too, for the requests the connection leaves
to it. A held request waits behind at most `limit - 1` others: an accepted request takes about
`limit / throughput` seconds, and memory stays bounded however much is offered.

Refusals are counted in `perf_predictor_rejected_total{reason="overload"}`, not as 5xx requests: load
alone must not fire the error-ratio alert (benchmarks/overload.py measures the bound).
"""
from __future__ import annotations

OVERLOAD = "overload"  # the reason refusals are counted under
RETRY_AFTER_S = 1
RETRY_AFTER = ((b"retry-after", str(RETRY_AFTER_S).encode()),)  # the header every refusal carries


class Admission:
    """The requests one process holds for one model; `limit` 0 means unbounded."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def full(self) -> bool:
        return 0 < self.limit <= self.held

    def enter(self) -> bool:
        """Takes a place, or False when there is none (then nothing is held)."""
        if self.full():
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1

    def message(self) -> str:
        return (f"the server is at capacity ({self.limit} requests in progress in this process); "
                f"retry in {RETRY_AFTER_S}s or elsewhere")
