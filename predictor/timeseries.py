"""KServe's time-series forecast API on the REST port, next to the v2 protocol.

`POST /v1/timeseries/forecast` and `GET /v1/timeseries/models` speak the types of
`kserve.protocol.rest.timeseries` (imported, never redefined) with the semantics of KServe's TimesFM
runtime: `options.horizon` at most the model's H (`invalid_horizon`), `options.quantiles` a subset of
the trained ones (`invalid_quantile`; omitted means all), `mean_forecast` the p50, and each output's
`start_timestamp` the input's advanced by the series length at the series' step. KServe registers these
routes only for its Hugging Face model class, so rest.py hands them to `serve` here.

The step: KServe's `frequency` is a unit without a multiple, so a series states its step as that unit
times an extra integer field `step` (default 1): `"frequency": "minute", "step": 5` is a 5-minute series.
A step other than the model's is refused (`invalid_frequency`): the model would forecast the wrong thing.

Every error is KServe's `ErrorResponse` with a 4xx status (503 while the model loads), counted in the
client-error metrics under protocol `timeseries`. The windows of all of a request's series go to the
model as one batch, through the same micro-batcher as v2, and are checked by the same request contract
(a series may be as short as the model's minimum history).
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

import numpy as np
import orjson
import pydantic
from kserve.model_repository import ModelRepository
from kserve.protocol.rest.timeseries.types import (
    Error,
    ErrorResponse,
    ForecastOutput,
    ForecastRequest,
    ForecastResponse,
    Frequency,
    Status,
    TimeSeriesForecast,
    TimeSeriesInput,
    TimeSeriesType,
)

from . import metrics
from .admission import OVERLOAD, RETRY_AFTER
from .asgi import CLOSE, BodyTooLarge, read_body, reply
from .contract import HistoryLength, RequestError, check_rows, internal_error
from .model import PerfPredictor, body_limit, served

logger = logging.getLogger("perf_predictor")

PROTOCOL = "timeseries"
ENDPOINT = "forecast"
FORECAST_PATH = "/v1/timeseries/forecast"
MODELS_PATH = "/v1/timeseries/models"
STEP_FIELD = "step"  # the extra TimeSeriesInput field: how many `frequency` units between two points

# Seconds in one unit of KServe's Frequency; months, quarters and years have no fixed length and no
# model of ours has such a step.
_UNITS = [(Frequency.SECOND, Frequency.SECOND_SHORT, 1), (Frequency.MINUTE, Frequency.MINUTE_SHORT, 60),
          (Frequency.HOUR, Frequency.HOUR_SHORT, 3600), (Frequency.DAY, Frequency.DAY_SHORT, 86400),
          (Frequency.WEEK, Frequency.WEEK_SHORT, 604800)]
UNIT_SECONDS = {unit: seconds for long, short, seconds in _UNITS for unit in (long, short)}


class ForecastError(Exception):
    """A request this API refuses: KServe's ErrorResponse with `type` (also the metrics reason)."""

    def __init__(self, error_type: str, message: str, param: Optional[str] = None, status: int = 400):
        super().__init__(message)
        self.type, self.message, self.param, self.status = error_type, message, param, status

    def response(self) -> ErrorResponse:
        return ErrorResponse(error=Error(code=str(self.status), message=self.message, param=self.param,
                                         type=self.type))


@dataclass(frozen=True)
class ModelTerms:
    """What a served model forecasts, from its card."""

    history: HistoryLength
    horizon: int
    quantiles: tuple[float, ...]  # ascending: the order of the forecasts' first axis
    step_seconds: int

    @classmethod
    def of(cls, model: PerfPredictor) -> "ModelTerms":
        card = model.card
        return cls(model.history_length, int(card["horizon"]), tuple(sorted(float(q) for q in card["quantiles"])),
                   int(card["step_seconds"]))

    @property
    def median_index(self) -> int:
        """The p50 (the trained quantile nearest 0.5, if a model was trained without it)."""
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))

    def step_in_units(self) -> tuple[Frequency, int]:
        """The model's step as the largest whole unit: 300 s -> ("minute", 5)."""
        unit, seconds = max(((u, s) for u, _, s in _UNITS if self.step_seconds % s == 0), key=lambda us: us[1])
        return unit, self.step_seconds // seconds

    def step_hint(self) -> str:
        unit, count = self.step_in_units()
        return f'"frequency": "{unit.value}", "{STEP_FIELD}": {count}'

    def describe(self, model: PerfPredictor) -> dict:
        """GET /v1/timeseries/models/<name>: what a client needs to build a request."""
        unit, count = self.step_in_units()
        return {"name": model.name, "version": str(model.card.get("version", "")), "frequency": unit.value,
                STEP_FIELD: count, "step_seconds": self.step_seconds, "min_history": self.history.minimum,
                "max_horizon": self.horizon, "quantiles": list(self.quantiles)}


# ---------------------------------------------------------------- request


def load_json(body: bytes) -> Any:
    """orjson, or Python's parser for the NaN and Infinity that json.dumps writes (refused later as
    non-finite values, which is what they are, rather than as malformed JSON)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ForecastError("malformed_body", "the body is not valid JSON") from None


def _where(loc: tuple) -> str:
    """('inputs', 0, 'series', 'list[float]', 3) -> 'inputs[0].series'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part:  # a Union branch pydantic names by its type: the field ends before it
            break
        else:
            out += f".{part}" if out else part
    return out


def validation_error(exc: pydantic.ValidationError) -> ForecastError:
    errors = exc.errors(include_url=False)
    if any(e["type"] == "model_type" and not e["loc"] for e in errors):
        return ForecastError("malformed_body", "the body must be a JSON object (a ForecastRequest)")
    first = errors[0]
    param = _where(first["loc"])
    if first["type"] == "missing":
        return ForecastError("missing_field", f"the request has no {param}", param)
    if param.endswith(".series"):
        # the series' Union (list of numbers, or of lists) makes pydantic report both branches
        gaps = [e for e in errors if _where(e["loc"]) == param and e["input"] is None]
        if gaps:
            position = gaps[0]["loc"][-1]
            return ForecastError("non_finite", f"{param} has no value (null) at position {position}; "
                                               "fill gaps before sending", param)
        return ForecastError("invalid_series", f"{param} must be a list of numbers", param)
    if param.endswith(".frequency"):
        units = ", ".join(f.value for f in Frequency)
        return ForecastError("invalid_frequency", f"{param} must be one of {units}", param)
    return ForecastError("invalid_field", f"{param}: {first['msg']}", param)


def validate(document: Any) -> ForecastRequest:
    try:
        return ForecastRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def requested_quantiles(request: ForecastRequest, terms: ModelTerms) -> list[tuple[str, int]]:
    """(reply key, index into the forecasts) of each quantile asked for; all trained ones if none."""
    asked = request.options.quantiles
    if asked is None:
        return [(str(q), i) for i, q in enumerate(terms.quantiles)]
    out = []
    for q in asked:
        index = next((i for i, t in enumerate(terms.quantiles) if math.isclose(q, t, abs_tol=1e-9)), None)
        if index is None:
            trained = ", ".join(f"{t:g}" for t in terms.quantiles)
            raise ForecastError("invalid_quantile", f"Invalid quantile: {q:g}; this model forecasts {trained}",
                                "options.quantiles")
        out.append((str(q), index))
    return out


def series_step(item: TimeSeriesInput, i: int, terms: ModelTerms) -> int:
    """The series' step in seconds, which must be the model's."""
    step = (item.model_extra or {}).get(STEP_FIELD, 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ForecastError("invalid_frequency", f"inputs[{i}].{STEP_FIELD} must be a positive integer (the number "
                                                 f"of '{item.frequency.value}' units between two points)",
                            f"inputs[{i}].{STEP_FIELD}")
    unit = UNIT_SECONDS.get(item.frequency)
    if unit is None or unit * step != terms.step_seconds:
        stated = f"{step} {item.frequency.value}" if unit is None else f"{unit * step} s"
        raise ForecastError("invalid_frequency",
                            f"inputs[{i}] has a step of {stated}; this model was trained at {terms.step_seconds} s: "
                            f"send {terms.step_hint()}", f"inputs[{i}].frequency")
    return terms.step_seconds


def parse_timestamp(text: Optional[str], i: int) -> datetime:
    if text is None:
        raise ForecastError("missing_field", f"inputs[{i}] has no start_timestamp (ISO 8601, the time of its "
                                             "first point): the forecast's timestamps start from it",
                            f"inputs[{i}].start_timestamp")
    try:
        # Python 3.10's fromisoformat does not read KServe's trailing "Z"
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ForecastError("invalid_timestamp", f"inputs[{i}].start_timestamp {text[:64]!r} is not an ISO 8601 "
                                                 "timestamp such as 2026-01-31T12:00:00Z",
                            f"inputs[{i}].start_timestamp") from None


def format_like(text: str, when: datetime) -> str:
    """`when` written as the input's timestamp was: KServe's '...Z' for UTC, else ISO 8601."""
    if text.endswith(("Z", "z")) and when.utcoffset() == timedelta(0):
        return when.strftime("%Y-%m-%dT%H:%M:%S" + (".%f" if when.microsecond else "") + "Z")
    return when.isoformat()


def forecast_start(item: TimeSeriesInput, i: int, step_seconds: int) -> str:
    start = parse_timestamp(item.start_timestamp, i)
    try:
        return format_like(item.start_timestamp, start + timedelta(seconds=len(item.series) * step_seconds))
    except OverflowError:
        raise ForecastError("invalid_timestamp", f"inputs[{i}].start_timestamp is too late to forecast from",
                            f"inputs[{i}].start_timestamp") from None


def windows_of(request: ForecastRequest, terms: ModelTerms) -> tuple[np.ndarray, list[str]]:
    """The last W points of every series, [n, W] (a shorter series NaN-padded on the left, as the request
    contract does for every protocol), and each forecast's start_timestamp."""
    if not request.inputs:
        raise ForecastError("empty_batch", "inputs is empty: send at least one series", "inputs")
    rows, starts = [], []
    for i, item in enumerate(request.inputs):
        if item.type != TimeSeriesType.UNIVARIATE:
            raise ForecastError("unsupported_time_series_type",
                                "Only univariate time series are supported: send each metric as its own input",
                                f"inputs[{i}].type")
        if item.series and isinstance(item.series[0], list):
            raise ForecastError("invalid_series", f"inputs[{i}] is univariate: its series must be a flat list of "
                                                  "numbers", f"inputs[{i}].series")
        starts.append(forecast_start(item, i, series_step(item, i, terms)))
        if len(item.series) < terms.history.minimum:
            raise ForecastError("too_short", f"inputs[{i}] ({item.name!r}) has {len(item.series)} points; each series "
                                             f"needs at least {terms.history.minimum} (oldest first)",
                                f"inputs[{i}].series")
        rows.append(np.asarray(item.series[-terms.history.window:], dtype=np.float64))
    try:
        return check_rows(rows, terms.history), starts
    except RequestError as exc:  # a NaN or infinity: the contract's message says which series and where
        bad = next((i for i, row in enumerate(rows) if not np.isfinite(row).all()), None)
        raise ForecastError(exc.code, str(exc), "inputs" if bad is None else f"inputs[{bad}].series") from None


# ---------------------------------------------------------------- reply


def forecast_response(request: ForecastRequest, terms: ModelTerms, forecasts: np.ndarray, wanted: list[tuple[str, int]],
          starts: list[str]) -> ForecastResponse:
    """forecasts: [quantiles, n, H] -> one ForecastOutput per input, as KServe's TimesFM runtime answers."""
    h = request.options.horizon
    block = forecasts[:, :, :h].tolist()
    outputs = []
    for i, item in enumerate(request.inputs):
        content = TimeSeriesForecast(
            type=TimeSeriesType.UNIVARIATE, name=item.name, mean_forecast=block[terms.median_index][i],
            frequency=item.frequency, start_timestamp=starts[i],
            quantiles={key: block[index][i] for key, index in wanted},
            **{STEP_FIELD: (item.model_extra or {}).get(STEP_FIELD, 1)})
        outputs.append(ForecastOutput(type="time_series_forecast", id=str(uuid.uuid4()), status=Status.COMPLETED,
                                      content=[content]))
    return ForecastResponse(id=str(uuid.uuid4()), created_at=int(time.time()), status=Status.COMPLETED,
                            model=request.model, outputs=outputs)


# ---------------------------------------------------------------- ASGI


def handles(scope) -> bool:
    return scope["type"] == "http" and scope["path"].startswith("/v1/timeseries/")


async def refuse(send, error: ForecastError, state: Optional[dict] = None, extra_headers: tuple = ()) -> None:
    if state is not None:
        state.update(status=error.status, reason=error.type)
    logger.info("rejected time-series request: %s", error.message)
    await reply(send, error.status, error.response().model_dump_json().encode(), extra_headers=extra_headers)


def overloaded(model: PerfPredictor) -> ForecastError:
    """The 503 a forecast request gets past the model's bound (admission.py)."""
    return ForecastError(OVERLOAD, model.admission.message(), status=503)


def overloaded_body(model: PerfPredictor) -> bytes:
    return overloaded(model).response().model_dump_json().encode()


def _ready_model(registry: ModelRepository, name: Any) -> Optional[PerfPredictor]:
    model = served(registry, name) if isinstance(name, str) else None
    return model if model is not None and model.ready else None


async def forecast(request: ForecastRequest, model: PerfPredictor) -> ForecastResponse:
    terms = ModelTerms.of(model)
    if not 1 <= request.options.horizon <= terms.horizon:
        raise ForecastError("invalid_horizon", f"Invalid horizon: {request.options.horizon}; this model forecasts 1 to "
                                               f"{terms.horizon} steps", "options.horizon")
    wanted = requested_quantiles(request, terms)
    windows, starts = windows_of(request, terms)
    with metrics.predict_seconds(model.name).time():
        forecasts = await model.forecast(windows, PROTOCOL, inline=True)
    return forecast_response(request, terms, forecasts, wanted, starts)


async def serve_forecast(registry: ModelRepository, scope, receive, send) -> None:
    try:
        document, unreadable = load_json(await read_body(receive, body_limit(registry), scope)), None
    except BodyTooLarge as exc:
        with metrics.tracked("unknown", PROTOCOL, ENDPOINT) as state:
            return await refuse(send, ForecastError("too_large", str(exc), status=413), state, CLOSE)
    except ForecastError as exc:
        document, unreadable = None, exc
    named = document.get("model") if isinstance(document, dict) else None
    model = served(registry, named) if isinstance(named, str) else None  # labels the metrics: no made-up names
    with metrics.tracked(model.name if model else "unknown", PROTOCOL, ENDPOINT) as state:
        try:
            if unreadable is not None:
                raise unreadable
            request = validate(document)
            if model is None:
                names = ", ".join(served_names(registry))
                raise ForecastError("unknown_model", f"Model with name {request.model} does not exist: this "
                                                       f"server serves {names}", "model", 404)
            if not model.ready:
                raise ForecastError("model_not_ready", f"Model with name {model.name} is not ready", "model", 503)
            if not model.admission.enter():  # (most are refused by the connection first: rest.OverloadRefusal)
                raise overloaded(model)
            try:
                response = await forecast(request, model)
            finally:
                model.admission.leave()
        except ForecastError as exc:
            return await refuse(send, exc, state, extra_headers=RETRY_AFTER if exc.type == OVERLOAD else ())
        except Exception as exc:  # a bug of ours: the client gets a 500 in the protocol's shape
            logger.exception("time-series forecast failed")
            return await reply(send, 500, ForecastError("internal_error", internal_error(exc),
                                                         status=500).response().model_dump_json().encode())
        state["status"] = 200
        await reply(send, 200, response.model_dump_json().encode())


def served_names(registry: ModelRepository) -> list[str]:
    return [name for name in registry.get_models() if served(registry, name) is not None]


async def serve(registry: ModelRepository, scope, receive, send) -> None:
    """Everything under /v1/timeseries/; not found and wrong methods in the API's error shape too."""
    path, method = scope["path"].rstrip("/"), scope["method"]
    if path == FORECAST_PATH:
        if method == "POST":
            return await serve_forecast(registry, scope, receive, send)
        allowed = b"POST"
    elif path == MODELS_PATH or path.startswith(MODELS_PATH + "/"):
        if method == "GET":
            if path == MODELS_PATH:  # KServe answers with the list of names
                names = [name for name in served_names(registry) if _ready_model(registry, name)]
                return await reply(send, 200, orjson.dumps(names))
            name = path[len(MODELS_PATH) + 1:]
            model = _ready_model(registry, name)
            if model is None:
                return await refuse(send, ForecastError("unknown_model", f"Model with name {name} does not exist",
                                                        "model", 404))
            return await reply(send, 200, orjson.dumps(ModelTerms.of(model).describe(model)))
        allowed = b"GET"
    else:
        return await refuse(send, ForecastError("not_found", f"no such route: {method} {scope['path']}", status=404))
    await refuse(send, ForecastError("method_not_allowed", f"{method} {path}: use {allowed.decode()}", status=405),
                 extra_headers=((b"allow", allowed),))
