"""The request contract every protocol shares: what a forecast request must hold, the stable reason
code of each way it can fail, and how each outcome is told over HTTP and over gRPC.

A client mistake is a `RequestError` (KServe's InvalidInput): HTTP 400 `{"error": ...}` or gRPC
INVALID_ARGUMENT, with the same message; its `code` labels the client-error counter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from kserve.errors import InvalidInput

INPUT_NAME = "history"
INPUT_DATATYPES = {"FP32": np.float32, "FP64": np.float64}
OUTPUT_DATATYPE = "FP32"

# gRPC status codes (grpc/doc/statuscodes.md)
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 3, 4, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14
# The HTTP status a gRPC call is counted with when it fails before the model sees it. INTERNAL is the
# gRPC spec's status for a compressed message without grpc-encoding: the client's fault, counted 400.
HTTP_STATUS_OF_GRPC = {OK: 200, INVALID_ARGUMENT: 400, NOT_FOUND: 404, RESOURCE_EXHAUSTED: 413,
                       UNIMPLEMENTED: 415, INTERNAL: 400, UNAVAILABLE: 503}
# The client-error reason of a 4xx whose code gave none (KServe's own rejections, framing errors).
REASON_OF_HTTP_STATUS = {400: "invalid_request", 404: "unknown_model", 413: "too_large",
                         415: "unsupported_media_type", 499: "cancelled"}


class RequestError(InvalidInput):
    """A client mistake: `code` is a stable reason (for metrics), the message says what to fix."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.code = reason_code

    def __reduce__(self):  # as it comes back from the decoder process (offload.py)
        return type(self), (self.code, self.reason)


def reason_of(exc: BaseException) -> Optional[str]:
    return getattr(exc, "code", None)


def internal_error(exc: BaseException) -> str:
    """The one message a client gets for a bug of ours, on every protocol: no internals leak."""
    return f"internal error: {type(exc).__name__}"


@dataclass(frozen=True)
class HistoryLength:
    """How much history a series needs: the model reads the last `window` points, and accepts series
    from `minimum` points (the model's own minimum; `window` unless the model says otherwise). One
    request holds at most `max_series` series (None: any number)."""

    window: int
    minimum: int
    max_series: Optional[int] = None


def check_tensor_header(names: list, datatype: Any, shape: Any) -> list[int]:
    """One input named `history`, FP32/FP64, rank 2; returns its shape."""
    if not names:
        raise RequestError("missing_input", f"the request has no inputs; send one input named '{INPUT_NAME}'")
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise RequestError("unknown_input", f"unknown input {unknown[0]!r}: this model takes one input named '{INPUT_NAME}'")
    if len(names) > 1:
        raise RequestError("duplicate_input", f"input '{INPUT_NAME}' is given {len(names)} times")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError("malformed_body", f"malformed request body: input '{INPUT_NAME}' needs a 'shape' of "
                                             "non-negative integers")
    if datatype not in INPUT_DATATYPES:
        raise RequestError("wrong_datatype", f"input '{INPUT_NAME}' has datatype {datatype}; send FP32 or FP64")
    if len(shape) != 2:
        raise RequestError("wrong_rank", f"input '{INPUT_NAME}' must have shape [batch, length], got shape {list(shape)}")
    return list(shape)


def check_series_count(count: int, need: HistoryLength) -> None:
    """Before a request's numbers are read: a batch larger than the server takes is refused whole."""
    if need.max_series is not None and count > need.max_series:
        raise RequestError("too_many_series", f"the request holds {count} series; this server takes at most "
                                              f"{need.max_series} per request (--max_request_series): split it")


def check_range(history: np.ndarray, datatype: str) -> None:
    """Numbers sent as JSON text for an FP32 tensor must be FP32 numbers: a larger one would become
    infinite in the model's float32 arithmetic and give no forecast."""
    if datatype != "FP32" or not history.size:
        return
    limit = float(np.finfo(np.float32).max)
    outside = np.abs(history) > limit
    outside &= np.isfinite(history)  # NaN and infinities are check_history's to refuse
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise RequestError("out_of_range", f"series {row} has {history[row, col]:g} at position {col}, beyond the "
                                           f"range of FP32 (±{limit:.6g}); send FP64 for such values")


def too_short(index: int, length: int, need: HistoryLength) -> RequestError:
    return RequestError("too_short", f"instance {index} has {length} points; each series needs at least {need.minimum}")


def check_history(history: np.ndarray, need: HistoryLength, first: int = 0) -> np.ndarray:
    """Non-empty, long enough, finite. Returns the last `window` points as float64 [n, window]; a series
    shorter than the window (the model accepts it from `need.minimum` points) is padded on the left
    with NaN, which the forecaster reads as no history, so requests of any length share a batch.
    `first`: the index of the first row, for the error message."""
    if history.shape[0] == 0:
        raise RequestError("empty_batch", "the batch is empty: send at least one series")
    if history.shape[1] < need.minimum:
        raise RequestError(
            "too_short",
            f"each series needs at least {need.minimum} points of history (oldest first), got {history.shape[1]}",
        )
    recent = np.ascontiguousarray(history[:, -need.window:], dtype=np.float64)
    finite = np.isfinite(recent)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise RequestError(
            "non_finite",
            f"series {row + first} has a NaN or infinite value at position {col} of its last {recent.shape[1]} "
            "points; fill gaps before sending",
        )
    missing = need.window - recent.shape[1]
    if missing <= 0:
        return recent
    padded = np.full((recent.shape[0], need.window), np.nan)
    padded[:, missing:] = recent
    return padded


def check_rows(rows: list[np.ndarray], need: HistoryLength) -> np.ndarray:
    """`check_history` for series given one by one (v1 instances, time-series inputs), which may differ
    in length: each is cut to the window, checked and padded on its own."""
    if not rows:
        return check_history(np.empty((0, need.window)), need)
    check_series_count(len(rows), need)
    for i, row in enumerate(rows):
        if len(row) < need.minimum:
            raise too_short(i, len(row), need)
    recent = [np.asarray(row[-need.window:], dtype=np.float64) for row in rows]
    if len({len(row) for row in recent}) == 1:
        return check_history(np.stack(recent), need)
    return np.vstack([check_history(row[None, :], need, first=i) for i, row in enumerate(recent)])
