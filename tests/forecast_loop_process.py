"""`python -m forecast_loop` as a real process for tests: config file, its /metrics port from its log."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO

FORECAST_RULES = REPO / "charts" / "perf-predictor" / "files" / "forecast-loop-rules.yaml"


class LoopProcess:
    def __init__(self, root: Path, config: dict, name: str = "loop"):
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = root / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forecast_loop", "--config", str(self.config_path), "--listen", "127.0.0.1:0"],
            cwd=REPO, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        self.port = self._port()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _port(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"serving /metrics on http://[\d.]+:(\d+)/metrics", self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"forecast loop exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"forecast loop did not start:\n{self.log()}")

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
