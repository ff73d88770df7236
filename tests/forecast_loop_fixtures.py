"""Forecast loop test parts: the loop as a real process, and a real Prometheus holding NAB tweets.

`history` (module fixture): three series of `../shared/data/nab-tweets` (the last 700 points, 5-minute
step) moved to a grid that ends at the last whole step before now, plus a metric with NaN, Inf and a
long gap, backfilled with promtool and served by a real Prometheus. `LoopProcess` runs
`python -m forecast_loop` on a free port read from its log.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from training.sources.csv_files import read_csv

from .conftest import MODEL_NAME, REPO, shared_dir
from .prometheus_server import PrometheusProcess, backfill, require_prometheus

FORECAST_RULES = REPO / "charts" / "perf-predictor" / "files" / "forecast-loop-rules.yaml"


class LoopProcess:
    def __init__(self, root: Path, config: dict, name: str = "loop", args: tuple = ()):
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = root / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forecast_loop", "--config", str(self.config_path), "--listen", "127.0.0.1:0", *args],
            cwd=REPO, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        self.port = self._port()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _port(self, timeout: float = 30, pattern: str = r"serving /metrics on http://[\d.]+:(\d+)/metrics") -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"forecast loop exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"forecast loop did not start:\n{self.log()}")

    def scaler_port(self) -> int:
        """The KEDA external scaler's port, as the loop logs it (started with --scaler-listen)."""
        return self._port(pattern=r"serving the KEDA external scaler on [\d.]+:(\d+)")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def samples(self, name: str, **labels) -> list:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return [s for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels) -> float | None:
        found = self.samples(name, **labels)
        return found[0].value if found else None

    def wait_until(self, predicate, timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"forecast loop exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def rules_with(breach_for: str = "0s", errors_for: str = "0s") -> str:
    """The chart's forecast-loop rule groups with their placeholders filled, as the chart fills them."""
    return FORECAST_RULES.read_text().replace("__BREACH_FOR__", breach_for).replace("__ERRORS_FOR__", errors_for)


STEP = 300
POINTS = 700
SYMBOLS = ("AAPL", "AMZN", "GOOG")  # max_series 2 keeps AAPL and AMZN (label sets in sorted order)


def tweets(symbol: str) -> np.ndarray:
    path = shared_dir() / "data" / "nab-tweets" / f"Twitter_volume_{symbol}.csv"
    if not path.is_file():
        pytest.skip(f"NAB tweets not found at {path} (set PERF_PREDICTOR_SHARED)")
    return read_csv(path)[-1].values[-POINTS:]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    require_prometheus()
    root = tmp_path_factory.mktemp("forecast-loop-prometheus")
    # The data must end by now (Prometheus refuses scraped samples older than the newest block), and the
    # loop's window ends at the last whole step, so the last point is that step; with less than 100 s to
    # the next step, wait for it, so that the window does not move past the data during the test.
    if time.time() % STEP > STEP - 100:
        time.sleep(STEP - time.time() % STEP + 1)
    last = int(time.time()) // STEP * STEP
    stamps = last - STEP * np.arange(POINTS)[::-1]
    series = {s: tweets(s) for s in SYMBOLS}
    holes = {"gap": series["AAPL"].copy(), "all_nan": np.full(POINTS, np.nan), "inf": series["AMZN"].copy()}
    holes["gap"][-100:-88] = np.nan  # 12 missing steps inside the last W: more than the fill limit
    holes["inf"][-50] = np.inf  # one point: dropped and filled like a missed scrape
    lines = ["# HELP tweets Tweets per 5 minutes (NAB).", "# TYPE tweets gauge"]
    for symbol, values in series.items():
        lines += [f'tweets{{symbol="{symbol}"}} {v:g} {t}' for t, v in zip(stamps, values)]
    lines += ["# HELP tweets_holes Tweets with NaN and Inf.", "# TYPE tweets_holes gauge"]
    for case, values in holes.items():
        lines += [f'tweets_holes{{case="{case}"}} {v:g} {t}'.replace(" nan ", " NaN ").replace(" inf ", " +Inf ")
                  for t, v in zip(stamps, values)]
    data = root / "data"
    backfill(lines, data)
    prom = PrometheusProcess(root, data, "global: {scrape_interval: 1s, evaluation_interval: 1s}\n")
    prom.start()
    try:
        yield {"prometheus": prom, "root": root, "stamps": stamps, "series": series}
    finally:
        prom.stop()


def loop_config(prom_url: str, model_url: str, **extra) -> dict:
    return {
        "prometheus": {"url": prom_url, "timeout": "5s"},
        "model": {"url": model_url, "name": MODEL_NAME},
        "interval": "1s",
        "targets": [
            {"name": "tweets", "query": "tweets", "step": "5m", "max_series": 2,
             "thresholds": {"critical": {"above": 1}}},
            {"name": "holes", "query": "tweets_holes", "step": "5m"},
            {"name": "nothing", "query": "no_such_metric", "step": "5m"},
        ],
        **extra,
    }
