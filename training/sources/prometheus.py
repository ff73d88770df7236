"""A Prometheus server's history through the HTTP API's range query (`/api/v1/query_range`).

`load(url, query, start, end, step)` returns one `Series` per label set the query returns, named
from its labels (`up{instance="a:9100",job="node"}`). Prometheus refuses a range query that would
return more than 11,000 points per series, so the range is fetched in pages of at most
`MAX_POINTS_PER_PAGE` steps and the pages are joined per label set. Every series then goes through
the common gap policy (`base.regularize`) at the query's step: short gaps (a missed scrape, a
restart) are interpolated and long ones split the series.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

import numpy as np
import simdjson

from .base import Series, regularize

MAX_POINTS_PER_PAGE = 10_000  # the server's limit is 11,000 points per series per query
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """Prometheus durations ('5m', '1h30m', '90s') or plain seconds ('300') -> seconds."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"cannot parse duration {text!r} (use e.g. 5m, 1h, 300)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_time(text: str, now: float | None = None) -> float:
    """RFC 3339 / ISO 8601, Unix seconds, 'now', or relative to now ('-14d', 'now-2h') -> Unix seconds."""
    now = time.time() if now is None else now
    text = str(text).strip()
    if text == "now":
        return now
    relative = text[3:] if text.startswith("now") else text
    if relative.startswith("-") and relative[1:2].isdigit() and not relative[1:].replace(".", "").isdigit():
        return now - parse_duration(relative[1:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot parse time {text!r} (use RFC 3339, Unix seconds, now or -14d)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def series_name(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


class PrometheusError(Exception):
    """A range query that produced no result; `reason` is a stable code for metrics and logs."""

    reason = "prometheus_error"


class QueryFailed(PrometheusError, ValueError):
    """Prometheus answered, but not with a range result: refused (4xx/5xx) or malformed."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Unreachable(PrometheusError, OSError):
    """No answer: connection refused or reset, or no reply within the timeout."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _query_range(base_url: str, query: str, start: float, end: float, step: float, timeout: float,
                 headers: dict | None = None, context: ssl.SSLContext | None = None) -> list[dict]:
    url = base_url.rstrip("/") + "/api/v1/query_range"
    body = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                   "step": f"{step:g}"}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError, OSError):
            detail = ""
        reason = "prometheus_http_5xx" if exc.code >= 500 else "prometheus_refused"
        raise QueryFailed(reason, f"Prometheus at {base_url} refused the query ({exc.code}): "
                                  f"{detail or exc.reason}") from None
    except (TimeoutError, socket.timeout) as exc:
        raise Unreachable("prometheus_timeout", f"cannot reach Prometheus at {base_url}: no answer in "
                                                f"{timeout:g}s") from exc
    except urllib.error.URLError as exc:
        timed_out = isinstance(exc.reason, (TimeoutError, socket.timeout))
        raise Unreachable("prometheus_timeout" if timed_out else "prometheus_unreachable",
                          f"cannot reach Prometheus at {base_url}: {exc.reason}") from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise Unreachable("prometheus_unreachable", f"cannot reach Prometheus at {base_url}: {exc!r}") from None
    try:  # simdjson: a range answer is mostly numbers in strings, 2-5x faster than json here
        payload = simdjson.Parser().parse(raw)
    except ValueError:
        raise QueryFailed("prometheus_malformed", f"Prometheus at {base_url} answered with invalid JSON") from None
    if not isinstance(payload, simdjson.Object):
        raise QueryFailed("prometheus_malformed", f"Prometheus at {base_url} answered with "
                                                  f"{type(payload).__name__}, not an object")
    if payload.get("status") != "success":
        error = payload.get("error")
        raise QueryFailed("prometheus_refused", f"Prometheus query failed: {error if error is not None else raw[:200]}")
    data = payload.get("data")
    result = data.get("result") if isinstance(data, simdjson.Object) else None
    if not isinstance(data, simdjson.Object) or data.get("resultType") != "matrix" \
            or not isinstance(result, simdjson.Array):
        kind = data.get("resultType") if isinstance(data, simdjson.Object) else None
        raise QueryFailed("prometheus_malformed", f"expected a range vector (matrix) result, got {kind}")
    return result.as_list()


def fetch(base_url: str, query: str, start: float, end: float, step: float, timeout: float = 60,
          max_points: int = MAX_POINTS_PER_PAGE, headers: dict | None = None,
          context: ssl.SSLContext | None = None) -> dict[tuple, tuple[dict, np.ndarray, np.ndarray]]:
    """Raw points per label set, paging through the range: {key: (labels, epoch_seconds, values)}.

    `headers` (e.g. Authorization) and `context` (TLS trust) go with every page. Raises `Unreachable` or
    `QueryFailed`, each with a `reason`; a result whose items are not label sets with points is malformed."""
    if step <= 0:
        raise ValueError("step must be positive")
    if end < start:
        raise ValueError("end is before start")
    collected: dict[tuple, tuple[dict, list, list]] = {}  # pages of stamps and values per label set
    page_start = start
    while page_start <= end:
        page_end = min(end, page_start + (max_points - 1) * step)
        for item in _query_range(base_url, query, page_start, page_end, step, timeout, headers, context):
            try:
                labels = item.get("metric", {})
                key = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
                entry = collected.setdefault(key, (labels, [], []))
                if item.get("values"):
                    stamps, values = zip(*item["values"])
                    entry[1].append(np.array(stamps, dtype=np.float64))
                    entry[2].append(np.array(values, dtype=np.float64))  # 'NaN', '+Inf' parse; gaps to the policy
            except (AttributeError, TypeError, ValueError):
                raise QueryFailed("prometheus_malformed", f"Prometheus at {base_url} answered with a "
                                                          f"malformed series: {str(item)[:200]}") from None
        page_start = page_end + step
    return {k: (labels, np.concatenate(ts) if ts else np.empty(0), np.concatenate(vs) if vs else np.empty(0))
            for k, (labels, ts, vs) in collected.items()}


def load(base_url: str, query: str, start: str | float, end: str | float = "now", step: str | float = "5m",
         max_points: int = MAX_POINTS_PER_PAGE) -> list[Series]:
    step_seconds = parse_duration(str(step))
    if step_seconds < 1 or not float(step_seconds).is_integer():
        raise ValueError(f"step must be a whole number of seconds, got {step!r}")
    now = time.time()
    t0, t1 = parse_time(str(start), now), parse_time(str(end), now)
    raw = fetch(base_url, query, t0, t1, step_seconds, max_points=max_points)
    if not raw:
        raise ValueError(f"query {query!r} returned no series between {start} and {end}")
    series: list[Series] = []
    for labels, stamps, values in sorted(raw.values(), key=lambda item: series_name(item[0])):
        order = np.argsort(stamps, kind="stable")
        series.extend(regularize(series_name(labels), np.rint(stamps[order]).astype(np.int64), values[order],
                                 step_seconds=int(step_seconds)))
    return series
