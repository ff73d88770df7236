"""The loop's YAML config, validated strictly before anything starts.

Every section is read through `_Section`, which names the file and the key path of whatever is wrong
(unknown key, wrong type, bad value) in a `ConfigError`; `python -m forecast_loop` exits with status 2
on one. A new per-target block is one more entry in `_target()`.

    prometheus: {url, bearer_token_file?, ca_file?, timeout: 10s}
    model:      {url, name, bearer_token_file?, timeout: 10s, max_batch_series: 1024, step?}
    interval:   60s
    horizons:   [15m, 30m, 60m]
    listen:     0.0.0.0:9400
    accuracy:   {window: 24h}
    scaler:     {listen?}          # the KEDA external scaler (gRPC); off unless listen is set
    targets:
      - {name, query, step: 5m, max_series: 100,
         thresholds?: {quantile?, warning?: {above|below: N}, critical?: {above|below: N}},
         capacity?: {per_replica, max_replicas, min_replicas: 1, quantile: 0.9, lead_time: 5m,
                     scale_down_window: 0, calibrate: true}}
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from training.sources.prometheus import parse_duration

from .capacity import Capacity

SEVERITIES = ("warning", "critical")
DIRECTIONS = ("above", "below")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_REQUIRED = object()


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    bearer_token_file: Optional[str]
    ca_file: Optional[str]
    timeout: float


@dataclass(frozen=True)
class ModelConfig:
    url: str
    name: str
    timeout: float
    max_batch_series: int
    step: Optional[float]  # used only when the served model does not publish its step
    bearer_token_file: Optional[str] = None  # the predictor's token file: its first token is sent


@dataclass(frozen=True)
class Threshold:
    severity: str
    direction: str  # above | below
    value: float


@dataclass(frozen=True)
class Thresholds:
    quantile: Optional[float]  # None: the model's highest quantile for `above`, lowest for `below`
    levels: tuple[Threshold, ...]


@dataclass(frozen=True)
class Target:
    name: str
    query: str
    step: float
    max_series: int
    thresholds: Optional[Thresholds]
    capacity: Optional[Capacity] = None


@dataclass(frozen=True)
class Config:
    path: str
    prometheus: PrometheusConfig
    model: ModelConfig
    interval: float
    horizons: tuple[float, ...]
    listen_host: str
    listen_port: int
    accuracy_window: float
    targets: tuple[Target, ...]
    scaler_listen: Optional[tuple[str, int]] = None  # (host, port) of the KEDA external scaler, or off


class _Section:
    """One mapping of the file: typed getters that name `file: key.path` in every error."""

    def __init__(self, file: str, where: str, value: Any, keys: tuple[str, ...]):
        self.file, self.where = file, where
        if not isinstance(value, dict):
            raise self.error(f"must be a mapping, got {_kind(value)}")
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise ConfigError(f"{file}: {self.key(unknown[0])}: unknown key (allowed: {', '.join(keys)})")
        self.value = value

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else str(name)

    def error(self, message: str, name: str | None = None) -> ConfigError:
        return ConfigError(f"{self.file}: {self.key(name) if name is not None else self.where or '(top level)'}: "
                           f"{message}")

    def get(self, name: str, parse: Callable[[Any], Any], default: Any = _REQUIRED) -> Any:
        if name not in self.value or self.value[name] is None:
            if default is _REQUIRED:
                raise self.error("is required", name)
            return default
        try:
            return parse(self.value[name])
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise self.error(str(exc), name) from None

    def section(self, name: str, keys: tuple[str, ...], required: bool = True) -> Optional["_Section"]:
        if self.value.get(name) is None:
            if required:
                raise self.error("is required", name)
            return None
        return _Section(self.file, self.key(name), self.value[name], keys)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {_kind(value)}")
    return value.strip()


def _url(value: Any) -> str:
    text = _text(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"must be an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _non_negative_duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be a duration like 30s, 5m or 1h, got {_kind(value)}")
    seconds = parse_duration(str(value))
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration >= 0, got {value!r}")
    return seconds


def _duration(value: Any) -> float:
    seconds = _non_negative_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def _step(value: Any) -> float:
    seconds = _duration(value)
    if seconds < 1 or not float(seconds).is_integer():
        raise ValueError(f"must be a whole number of seconds, at least 1s, got {value!r}")
    return seconds


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an integer >= 0, got {value!r}")
    return value


def _positive_number(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


def _quantile(value: Any) -> float:
    q = _number(value)
    if not 0 < q < 1:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value!r}")
    return q


def parse_listen(value: Any) -> tuple[str, int]:
    text = _text(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"must be host:port (port 0 picks a free one), got {text!r}")
    return host or "0.0.0.0", int(port)


def _thresholds(section: _Section) -> Thresholds:
    levels = []
    for severity in SEVERITIES:
        level = section.section(severity, DIRECTIONS, required=False)
        if level is None:
            continue
        given = [d for d in DIRECTIONS if level.value.get(d) is not None]
        if len(given) != 1:
            raise level.error("needs exactly one of above or below")
        levels.append(Threshold(severity, given[0], level.get(given[0], _number)))
    if not levels:
        raise section.error("needs warning or critical (or leave thresholds out)")
    return Thresholds(section.get("quantile", _quantile, None), tuple(levels))


CAPACITY_KEYS = ("per_replica", "max_replicas", "min_replicas", "quantile", "lead_time", "scale_down_window",
                 "calibrate")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _capacity(section: _Section) -> Capacity:
    minimum = section.get("min_replicas", _non_negative_int, 1)
    maximum = section.get("max_replicas", _positive_int)
    if maximum < minimum:
        raise section.error(f"must be >= min_replicas ({minimum}), got {maximum}", "max_replicas")
    quantile = section.get("quantile", _quantile, 0.9)
    calibrate = section.get("calibrate", _bool, True)
    if calibrate and not quantile > 0.5:
        raise section.error(f"needs quantile above 0.5 (it scales the distance above the median), got quantile "
                            f"{quantile:g}; set calibrate: false", "calibrate")
    return Capacity(
        per_replica=section.get("per_replica", _positive_number),
        max_replicas=maximum, min_replicas=minimum,
        quantile=quantile,
        lead_time=section.get("lead_time", _non_negative_duration, 300.0),
        scale_down_window=section.get("scale_down_window", _non_negative_duration, 0.0),
        calibrate=calibrate,
    )


def _target(file: str, index: int, value: Any, horizons: tuple[float, ...]) -> Target:
    t = _Section(file, f"targets[{index}]", value, ("name", "query", "step", "max_series", "thresholds",
                                                    "capacity"))
    name = t.get("name", _text)
    if not _NAME.match(name):
        raise t.error(f"must be letters, digits and _.:- (at most 63), got {name!r}", "name")
    step = t.get("step", _step, 300.0)
    for horizon in horizons:
        if horizon % step:
            raise t.error(f"horizon {horizon:g}s is not a whole number of steps of {step:g}s", "step")
    thresholds = t.section("thresholds", ("quantile",) + SEVERITIES, required=False)
    capacity = t.section("capacity", CAPACITY_KEYS, required=False)
    return Target(
        name=name,
        query=t.get("query", _text),
        step=step,
        max_series=t.get("max_series", _positive_int, 100),
        thresholds=_thresholds(thresholds) if thresholds is not None else None,
        capacity=_capacity(capacity) if capacity is not None else None,
    )


def parse(document: Any, file: str = "<config>") -> Config:
    top = _Section(file, "", document, ("prometheus", "model", "interval", "horizons", "listen", "accuracy",
                                        "scaler", "targets"))
    p = top.section("prometheus", ("url", "bearer_token_file", "ca_file", "timeout"))
    prometheus = PrometheusConfig(
        url=p.get("url", _url),
        bearer_token_file=p.get("bearer_token_file", _text, None),
        ca_file=p.get("ca_file", _text, None),
        timeout=p.get("timeout", _duration, 10.0),
    )
    m = top.section("model", ("url", "name", "bearer_token_file", "timeout", "max_batch_series", "step"))
    model = ModelConfig(
        url=m.get("url", _url),
        name=m.get("name", _text),
        timeout=m.get("timeout", _duration, 10.0),
        max_batch_series=m.get("max_batch_series", _positive_int, 1024),
        step=m.get("step", _step, None),
        bearer_token_file=m.get("bearer_token_file", _text, None),
    )

    def horizon_list(value: Any) -> tuple[float, ...]:
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be a non-empty list of durations, got {_kind(value)}")
        seconds = tuple(sorted({_duration(v) for v in value}))
        if any(not s.is_integer() for s in seconds):
            raise ValueError("must be whole numbers of seconds")
        return seconds

    horizons = top.get("horizons", horizon_list, (900.0, 1800.0, 3600.0))
    accuracy = top.section("accuracy", ("window",), required=False)
    def target_list(value: Any) -> list:
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be a non-empty list, got {_kind(value)}")
        return value

    targets_value = top.get("targets", target_list)
    targets = tuple(_target(file, i, v, horizons) for i, v in enumerate(targets_value))
    names = [t.name for t in targets]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{file}: targets[{i}].name: {name!r} is used by more than one target")
    host, port = top.get("listen", parse_listen, ("0.0.0.0", 9400))
    scaler = top.section("scaler", ("listen",), required=False)
    return Config(
        path=file, prometheus=prometheus, model=model,
        interval=top.get("interval", _duration, 60.0),
        horizons=horizons, listen_host=host, listen_port=port,
        accuracy_window=accuracy.get("window", _duration, 86400.0) if accuracy else 86400.0,
        targets=targets,
        scaler_listen=scaler.get("listen", parse_listen, None) if scaler else None,
    )


def load(path: str | Path) -> Config:
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    config = parse(document, file)
    for key, name in (("prometheus.bearer_token_file", config.prometheus.bearer_token_file),
                      ("prometheus.ca_file", config.prometheus.ca_file),
                      ("model.bearer_token_file", config.model.bearer_token_file)):
        if name is not None and not Path(name).is_file():
            raise ConfigError(f"{file}: {key}: no such file {name!r}")
    return config
