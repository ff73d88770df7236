"""The Prometheus source against a real Prometheus server (the Debian package's /usr/bin/prometheus).

The session fixture backfills nine days of a two-series metric at a 1-minute step with
`promtool tsdb create-blocks-from openmetrics` (12,960 points per series: more than the 11,000 points a
single range query may return, so loading it needs paging), then starts Prometheus on a free loopback
port with a throwaway config and storage directory, scraping itself (a real exporter) every second.
Skipped with the reason when the binaries are absent (`apt-get install -y prometheus`).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from training.sources import prometheus

from .conftest import REPO, free_port
from .prometheus_server import PrometheusProcess, backfill, require_prometheus

STEP = 60
DAYS = 9
METRIC = "perf_backfill_requests"


def backfill_values(service: str, n: int) -> np.ndarray:
    t = np.arange(n)
    base = {"a": 100.0, "b": 2500.0}[service]
    return np.round(base * (1.3 + np.sin(2 * np.pi * t * STEP / 86400)) + (t % 7), 3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_prometheus()
    root = tmp_path_factory.mktemp("prometheus")
    data = root / "data"
    n = DAYS * 86400 // STEP
    end = (int(time.time()) // 3600 - 1) * 3600  # whole hour, safely in the past
    start = end - (n - 1) * STEP
    lines = [f"# HELP {METRIC} Backfilled request rate.", f"# TYPE {METRIC} gauge"]
    for service in ("a", "b"):
        values = backfill_values(service, n)
        lines += [f'{METRIC}{{service="{service}"}} {v} {start + i * STEP}' for i, v in enumerate(values)]
    backfill(lines, data)
    prom = PrometheusProcess(root, data, "global: {scrape_interval: 1s, evaluation_interval: 1s}\n")
    prom.start()
    try:
        prom.reload("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n"
                    f"  - job_name: prometheus\n    static_configs: [{{targets: ['127.0.0.1:{prom.port}']}}]\n")
        # a few samples of the self-scrape (a real exporter) stored
        prom.wait_for("count_over_time(up[1m]) >= 3", what="(self-scrape)")
        yield {"url": prom.url, "port": prom.port, "start": start, "end": end, "n": n}
    finally:
        prom.stop()


def test_live_scrape_of_a_real_exporter_loads_one_series_per_label_set(server):
    series = prometheus.load(server["url"], 'up{job="prometheus"}', start="-20s", end="now", step="1s")
    assert [s.name for s in series] == [f'up{{instance="127.0.0.1:{server["port"]}",job="prometheus"}}']
    assert series[0].step_seconds == 1 and len(series[0].values) >= 3
    assert np.all(series[0].values == 1.0)

    by_code = prometheus.load(server["url"], "sum by (code, handler) (prometheus_http_requests_total)",
                              start="-20s", end="now", step="1s")
    names = [s.name for s in by_code]
    assert names and len(set(names)) == len(names)
    assert all(name.startswith("{code=") and "handler=" in name for name in names)


def test_range_longer_than_the_server_limit_is_paged(server):
    with pytest.raises(ValueError, match="11,000|maximum resolution"):  # the real server refuses one big query
        prometheus._query_range(server["url"], METRIC, server["start"], server["end"], STEP, timeout=30)
    series = prometheus.load(server["url"], METRIC, start=str(server["start"]), end=str(server["end"]), step="1m")
    assert [s.name for s in series] == [f'{METRIC}{{service="a"}}', f'{METRIC}{{service="b"}}']
    for s, service in zip(series, "ab"):
        assert s.step_seconds == STEP and len(s.values) == server["n"] > 11_000
        assert s.start == np.datetime64(server["start"], "s")
        np.testing.assert_allclose(s.values, backfill_values(service, server["n"]))


def test_paging_joins_pages_without_duplicates_or_holes(server):
    end = server["start"] + 999 * STEP
    series = prometheus.load(server["url"], f'{METRIC}{{service="b"}}', start=str(server["start"]), end=str(end),
                             step="1m", max_points=7)
    np.testing.assert_allclose(series[0].values, backfill_values("b", 1000))


def test_bad_query_and_unreachable_server_are_clear_errors(server):
    with pytest.raises(ValueError, match="refused the query"):
        prometheus.load(server["url"], "sum(", start="-1m", step="1s")
    with pytest.raises(ValueError, match="returned no series"):
        prometheus.load(server["url"], "no_such_metric_anywhere", start="-1m", step="1s")
    with pytest.raises(OSError, match="cannot reach Prometheus"):
        prometheus.load(f"http://127.0.0.1:{free_port()}", "up", start="-1m", step="1s")


def test_training_cli_trains_from_prometheus(server, tmp_path):
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--prometheus-url", server["url"], "--query", METRIC,
         "--start", str(server["start"]), "--end", str(server["end"]), "--step", "5m",
         "--max-iter", "10", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads((out / "model-card.json").read_text())
    assert card["step_seconds"] == 300 and card["training"]["source"].startswith(f"prometheus:{server['url']}")
    assert [s["name"] for s in card["training"]["series"]] == [f'{METRIC}{{service="a"}}', f'{METRIC}{{service="b"}}']
    assert all(s["rows"] == DAYS * 288 for s in card["training"]["series"])


def test_time_and_duration_parsing():
    assert prometheus.parse_duration("5m") == 300 and prometheus.parse_duration("1h30m") == 5400
    assert prometheus.parse_duration("300") == 300
    with pytest.raises(ValueError):
        prometheus.parse_duration("5 minutes")
    assert prometheus.parse_time("-14d", now=2_000_000) == 2_000_000 - 14 * 86400
    assert prometheus.parse_time("now-2h", now=10_000) == 10_000 - 7200
    assert prometheus.parse_time("2024-01-01T00:00:00Z") == 1704067200
    assert prometheus.parse_time("1704067200") == 1704067200
