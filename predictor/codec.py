"""Wire codecs: v2 REST (JSON, and the binary tensor extension), gRPC ModelInfer (protobuf) and v1
REST, to and from numpy. Every format is decoded onto one core, `to_history`, which applies the
request contract (contract.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import orjson
import simdjson

from .contract import (INPUT_DATATYPES, INPUT_NAME, OUTPUT_DATATYPE, HistoryLength, RequestError, check_history,
                       check_range, check_rows, check_series_count, check_tensor_header)


def from_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = np.dtype(INPUT_DATATYPES[datatype]).newbyteorder("<")
    if len(raw) != shape[0] * shape[1] * dtype.itemsize:
        raise RequestError(
            "malformed_tensor",
            f"input '{INPUT_NAME}' has {len(raw)} bytes of binary data; shape {shape} of {datatype} needs "
            f"{shape[0] * shape[1] * dtype.itemsize}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


# pysimdjson reports an array's length from the parser's tape, where it saturates at 2^24 - 1; its
# `as_list()` allocates that many slots and writes every element (past the end for a longer array).
# No array of that length or more reaches `as_list` here: `as_buffer` (sized from the tape's slots)
# and plain iteration are safe, and every array this module converts is checked first.
SATURATED_LENGTH = (1 << 24) - 1
HEADER_ITEMS = 4096  # numbers, strings and containers in a request's fields other than its tensor data
HEADER_DEPTH = 32


def _flat_or_regular_rows(data: simdjson.Array, shape: list[int]) -> bool:
    """Whether `as_buffer`, which flattens any nesting, reads exactly the numbers the shape describes
    (as far as lengths tell: anything else goes to numpy, which rejects irregular nesting)."""
    if not len(data) or not isinstance(data[0], simdjson.Array):
        return len(data) == shape[0] * shape[1]
    return len(data) == shape[0] and all(
        isinstance(row, simdjson.Array) and len(row) == shape[1] and not (len(row) and isinstance(row[0], simdjson.Array))
        for row in data)


def _too_many_values(shape: list[int]) -> RequestError:
    return RequestError("malformed_tensor", f"input '{INPUT_NAME}' data holds more numbers than its shape {shape}")


def _values_list(data: simdjson.Array, shape: list[int]) -> list:
    """A simdjson array as Python lists, never through `as_list` on an array whose length saturated,
    never nested deeper than the shape's rank, and never more elements than the shape asks for (a
    bigger array is refused as it is met)."""
    budget = shape[0] * shape[1] + shape[0] + 1  # the numbers and the rows' lists

    def convert(array: simdjson.Array, depth: int) -> list:
        nonlocal budget
        budget -= len(array)
        if budget < 0 or len(array) >= SATURATED_LENGTH:
            raise _too_many_values(shape)
        if depth > len(shape):
            raise RequestError("malformed_tensor", f"input '{INPUT_NAME}' data is nested deeper than its shape {shape}")
        return [convert(item, depth + 1) if isinstance(item, simdjson.Array) else item for item in array]

    return convert(data, 1)


def from_values(data: Any, shape: list[int]) -> np.ndarray:
    """Numbers from a list, a protobuf repeated field, or a simdjson array (read straight into numpy)."""
    try:
        if isinstance(data, simdjson.Array):
            try:
                if _flat_or_regular_rows(data, shape):  # as_buffer reads nested rows in order
                    return np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64).reshape(shape)
            except TypeError:
                pass  # not numbers only ("NaN" strings, say): numpy converts what it can, as for lists
            data = _values_list(data, shape)
        return np.asarray(data, dtype=np.float64).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise RequestError(
            "malformed_tensor", f"input '{INPUT_NAME}' data does not match its shape {shape}: {exc}"
        ) from None


def to_history(names: list, datatype: Any, shape: Any, need: HistoryLength, raw: Optional[bytes] = None,
               values: Any = None) -> np.ndarray:
    """The one validation core under every v2 wire format: the tensor's header, its numbers (raw
    little-endian bytes, or a list / protobuf repeated field / simdjson array), then the history's checks."""
    shape = check_tensor_header(names, datatype, shape)
    check_series_count(shape[0], need)
    if raw is not None:
        history = from_raw(raw, datatype, shape)
    else:
        history = from_values(values, shape)
        check_range(history, datatype)
    return check_history(history, need)


def decode_grpc(request: Any, need: HistoryLength) -> np.ndarray:
    """A gRPC ModelInferRequest straight to numpy: raw_input_contents or typed contents."""
    names = [t.name for t in request.inputs]
    tensor = request.inputs[0] if names else None
    datatype, shape = (tensor.datatype, [int(d) for d in tensor.shape]) if tensor else (None, None)
    if request.raw_input_contents:
        return to_history(names, datatype, shape, need, raw=request.raw_input_contents[0])
    contents = None
    if tensor is not None:
        contents = tensor.contents.fp32_contents if datatype == "FP32" else tensor.contents.fp64_contents
    return to_history(names, datatype, shape, need, values=contents)


@dataclass
class V2Reply:
    """What a v2 REST request asks of the reply: its id, which outputs, and which of them in binary."""

    request_id: Optional[str]
    outputs: Optional[list[tuple[str, bool]]]  # requested (name, binary); None: all outputs
    binary_default: bool


def _malformed(message: str) -> RequestError:
    return RequestError("malformed_body", f"malformed request body: {message}")


def _binary_size(tensor: dict) -> Optional[int]:
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise _malformed(f"'parameters' of input '{tensor.get('name')}' must be an object")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise _malformed("binary_data_size must be a non-negative integer")
    return size


def _fields(obj: simdjson.Object):
    """An object's (name, value) pairs, values as simdjson proxies (`items()` would convert them whole).
    A name holding a NUL cannot be looked up by the library, so it is refused."""
    for key in obj.keys():
        if "\x00" in key:
            raise _malformed("a field name holds a NUL character")
        yield key, obj[key]


class _Plain:
    """A request's fields other than tensor data as Python objects: at most HEADER_ITEMS items, nested
    at most HEADER_DEPTH deep, and no array or object converted whole by the library (SATURATED_LENGTH)."""

    def __init__(self):
        self.budget = HEADER_ITEMS

    def __call__(self, value: Any, depth: int = 0) -> Any:
        self.budget -= 1
        if isinstance(value, (simdjson.Array, simdjson.Object)):
            self.budget -= len(value)
            if depth >= HEADER_DEPTH:
                raise _malformed(f"the request's fields are nested more than {HEADER_DEPTH} deep")
            if self.budget < 0:
                raise _malformed(f"the request's fields other than 'data' hold more than {HEADER_ITEMS} items")
            if isinstance(value, simdjson.Array):
                return [self(item, depth + 1) for item in value]
            return {key: self(item, depth + 1) for key, item in _fields(value)}
        return value


def _json_header(raw: bytes) -> dict:
    """The body as Python objects, except each input's "data", which stays a simdjson array so that
    its numbers go straight into numpy rather than through a Python float each."""
    try:
        doc = simdjson.Parser().parse(raw)
    except (ValueError, RuntimeError):  # RuntimeError: nesting deeper than the parser's limit, say
        raise RequestError("malformed_body", "the body is not valid JSON") from None
    if not isinstance(doc, simdjson.Object):
        raise _malformed("expected a JSON object with 'inputs'")
    plain = _Plain()
    if len(doc) > HEADER_ITEMS:
        raise _malformed(f"the body has more than {HEADER_ITEMS} fields")
    header = {key: plain(value) for key, value in _fields(doc) if key != "inputs"}
    inputs = doc.get("inputs")
    if isinstance(inputs, simdjson.Array):
        plain.budget -= len(inputs)
        if plain.budget < 0:
            raise _malformed(f"'inputs' holds {len(inputs)} tensors")
        inputs = [{key: (value if key == "data" else plain(value, 2)) for key, value in _fields(t)}
                  if isinstance(t, simdjson.Object) and len(t) <= HEADER_ITEMS else plain(t, 1) for t in inputs]
    else:
        inputs = plain(inputs)
    if "inputs" in doc:
        header["inputs"] = inputs
    return header


def decode_v2_body(body: bytes, json_length: Optional[int], need: HistoryLength) -> tuple[np.ndarray, V2Reply]:
    """A v2 REST infer body, JSON or with the binary tensor extension, straight to numpy.

    Parsed with simdjson, each input's numbers read straight into numpy, without a Python object
    per number.
    """
    if json_length is not None and not 0 < json_length <= len(body):
        raise _malformed(f"Inference-Header-Content-Length {json_length} does not fit a body of {len(body)} bytes")
    header = _json_header(body if json_length is None else body[:json_length])
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise _malformed("'inputs' must be a list of tensors")
    tensor = inputs[0] if inputs else {}
    names, datatype, shape = [t.get("name") for t in inputs], tensor.get("datatype"), tensor.get("shape")
    check_series_count(check_tensor_header(names, datatype, shape)[0], need)  # before the tensor's fields are read
    size = _binary_size(tensor)
    if size is not None:
        raw = body[json_length:] if json_length is not None else b""
        if size != len(raw):
            raise RequestError("malformed_tensor", f"input '{INPUT_NAME}' declares {size} bytes of binary data "
                                                   f"but the body carries {len(raw)}")
        return to_history(names, datatype, shape, need, raw=raw), _v2_reply(header)
    data = tensor.get("data")
    if not isinstance(data, (list, simdjson.Array)):
        raise _malformed(f"input '{INPUT_NAME}' has no 'data' (and no binary_data_size)")
    return to_history(names, datatype, shape, need, values=data), _v2_reply(header)


def _v2_reply(header: dict) -> V2Reply:
    params = header.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    requested = header.get("outputs")
    outputs = None
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                      for o in requested):
            raise _malformed("'outputs' must be a list of objects with a 'name'")
        outputs = []
        for o in requested:
            o_params = o.get("parameters") or {}
            binary = o_params.get("binary_data", binary_default) if isinstance(o_params, dict) else binary_default
            outputs.append((o["name"], bool(binary)))
    request_id = header.get("id")
    return V2Reply(str(request_id) if request_id is not None else None, outputs, binary_default)


def encode_v2_body(reply: V2Reply, model_name: str, model_version: str, names: Sequence[str],
                   forecasts: np.ndarray) -> tuple[bytes, Optional[int]]:
    """The v2 REST reply: (body, JSON header length when outputs are binary, else None)."""
    by_name = dict(zip(names, forecasts))
    wanted = reply.outputs if reply.outputs is not None else [(n, reply.binary_default) for n in names]
    outputs, raw = [], []
    for name, binary in wanted:
        if name not in by_name:
            raise unknown_output(name, names)
        block = np.ascontiguousarray(by_name[name], dtype="<f4")
        entry: dict[str, Any] = {"name": name, "datatype": OUTPUT_DATATYPE, "shape": list(block.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": block.nbytes}
            raw.append(block.tobytes())
        else:
            entry["data"] = block.ravel()
        outputs.append(entry)
    reply_json = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if reply.request_id is not None:
        reply_json["id"] = reply.request_id
    header = orjson.dumps(reply_json, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, None
    return header + b"".join(raw), len(header)


def unknown_output(name: str, names: Sequence[str]) -> RequestError:
    return RequestError("unknown_output", f"unknown output {name!r}: this model has {', '.join(names)}")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, messages, packed numbers)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=64)
def _reply_head(model_name: str, model_version: str) -> bytes:
    return b"".join(_field(number, text.encode()) for number, text in ((1, model_name), (2, model_version)) if text)


@functools.lru_cache(maxsize=1024)
def _output_tensor(name: str, rows: int, columns: int) -> bytes:
    """An `outputs` entry: the same few for every reply of a model, whatever the numbers."""
    return _field(5, _field(1, name.encode()) + _field(2, OUTPUT_DATATYPE.encode()) +
                  _field(3, _varint(rows) + _varint(columns)))


def encode_grpc(request: Any, model_name: str, model_version: str, names: Sequence[str],
                forecasts: np.ndarray) -> bytes:
    """The serialized ModelInferResponse with raw little-endian FP32 tensors, only the requested outputs
    if any were named. Written in protobuf's wire format directly (fields in number order, as protobuf
    writes them), its fixed parts cached: cheaper than building the message and serializing it."""
    by_name = dict(zip(names, forecasts))
    parts = [_reply_head(model_name, model_version)]
    if request.id:
        parts.append(_field(3, request.id.encode()))
    raw = []
    for name in [o.name for o in request.outputs] or names:
        if name not in by_name:
            raise unknown_output(name, names)
        block = np.ascontiguousarray(by_name[name], dtype="<f4")
        parts.append(_output_tensor(name, *block.shape))
        data = block.tobytes()
        raw += (b"\x32", _varint(len(data)), data)  # field 6 (raw_output_contents), length-delimited
    return b"".join(parts + raw)


def decode_v1(payload: Any, need: HistoryLength) -> np.ndarray:
    """{"instances": [[...], ...]}, each series oldest first."""
    if not isinstance(payload, dict):
        raise RequestError("not_json", 'the body must be a JSON object like {"instances": [[...], ...]}')
    instances = payload.get("instances")
    if instances is None:
        raise RequestError("missing_instances", 'the body has no "instances": send {"instances": [[...], ...]}')
    if not isinstance(instances, list):
        raise RequestError("wrong_rank", '"instances" must be a list of series (lists of numbers)')
    check_series_count(len(instances), need)
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
        rows.append(row)
    return check_rows(rows, need)


def encode_v1(names: Sequence[str], forecasts: np.ndarray) -> dict:
    per_quantile = [block.tolist() for block in forecasts]
    return {"predictions": [dict(zip(names, rows)) for rows in zip(*per_quantile)]}
