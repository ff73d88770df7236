"""Request checking and response building for v1 and v2, kept apart from the model.

Every client mistake becomes `InvalidInput`, which KServe returns as HTTP 400 `{"error": ...}`
and gRPC INVALID_ARGUMENT with the same message. Each error carries a short `reason` code for metrics.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

INPUT_NAME = "history"
INPUT_DATATYPES = {"FP32": np.float32, "FP64": np.float64}
OUTPUT_DATATYPE = "FP32"


class RequestError(InvalidInput):
    """A client mistake: `reason` is a stable code (for metrics), the message says what to fix."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.code = reason_code


def check_history(history: np.ndarray, window: int) -> np.ndarray:
    """Shared checks for v1 and v2: non-empty, long enough, finite. Returns the last `window` points, float64."""
    if history.shape[0] == 0:
        raise RequestError("empty_batch", "the batch is empty: send at least one series")
    if history.shape[1] < window:
        raise RequestError(
            "too_short",
            f"each series needs at least {window} points of history (oldest first), got {history.shape[1]}",
        )
    recent = np.ascontiguousarray(history[:, -window:], dtype=np.float64)
    finite = np.isfinite(recent)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise RequestError(
            "non_finite",
            f"series {row} has a NaN or infinite value at position {col} of its last {window} points; "
            "fill gaps before sending",
        )
    return recent


def decode_v2(request: InferRequest, window: int) -> np.ndarray:
    if not request.inputs:
        raise RequestError("missing_input", f"the request has no inputs; send one input named '{INPUT_NAME}'")
    names = [i.name for i in request.inputs]
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise RequestError("unknown_input", f"unknown input {unknown[0]!r}: this model takes one input named '{INPUT_NAME}'")
    if len(names) > 1:
        raise RequestError("duplicate_input", f"input '{INPUT_NAME}' is given {len(names)} times")
    tensor = request.inputs[0]
    if tensor.datatype not in INPUT_DATATYPES:
        raise RequestError(
            "wrong_datatype", f"input '{INPUT_NAME}' has datatype {tensor.datatype}; send FP32 or FP64"
        )
    shape = list(tensor.shape)
    if len(shape) != 2:
        raise RequestError(
            "wrong_rank", f"input '{INPUT_NAME}' must have shape [batch, length], got shape {shape}"
        )
    try:
        history = tensor.as_numpy()
    except (ValueError, TypeError) as exc:
        raise RequestError(
            "malformed_tensor", f"input '{INPUT_NAME}' data does not match its shape {shape}: {exc}"
        ) from None
    return check_history(history.reshape(shape), window)


def decode_v1(payload: Any, window: int) -> np.ndarray:
    if not isinstance(payload, dict):
        raise RequestError("not_json", 'the body must be a JSON object like {"instances": [[...], ...]}')
    instances = payload.get("instances")
    if instances is None:
        raise RequestError("missing_instances", 'the body has no "instances": send {"instances": [[...], ...]}')
    if not isinstance(instances, list):
        raise RequestError("wrong_rank", '"instances" must be a list of series (lists of numbers)')
    if not instances:
        return check_history(np.empty((0, window)), window)
    rows = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, list):
            raise RequestError("wrong_rank", f"instance {i} is not a list of numbers")
        try:
            row = np.asarray(instance, dtype=np.float64)
        except (TypeError, ValueError):
            raise RequestError("wrong_datatype", f"instance {i} holds something other than numbers") from None
        if row.ndim != 1:
            raise RequestError("wrong_rank", f"instance {i} must be a flat list of numbers")
        if len(row) < window:
            raise RequestError(
                "too_short", f"instance {i} has {len(row)} points; each series needs at least {window}"
            )
        rows.append(row[-window:])
    return check_history(np.stack(rows), window)


def encode_v2(request: InferRequest, model_name: str, model_version: str, names: Sequence[str],
              forecasts: np.ndarray) -> InferResponse:
    """forecasts: [n_quantiles, batch, horizon]. Data goes out as lists: KServe 0.21's gRPC encoder
    cannot take numpy arrays of more than one element, and lists serve REST JSON and binary alike."""
    outputs = [
        InferOutput(name=name, shape=list(block.shape), datatype=OUTPUT_DATATYPE, data=block.ravel().tolist())
        for name, block in zip(names, forecasts)
    ]
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        model_version=model_version,
        infer_outputs=outputs,
        from_grpc=request.from_grpc,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )


def encode_v1(names: Sequence[str], forecasts: np.ndarray) -> dict:
    per_quantile = [block.tolist() for block in forecasts]
    return {"predictions": [dict(zip(names, rows)) for rows in zip(*per_quantile)]}
