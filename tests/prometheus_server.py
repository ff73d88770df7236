"""A real Prometheus (the Debian package's /usr/bin/prometheus) for tests: backfilled history, any config.

`backfill(lines, data_dir)` writes OpenMetrics lines into TSDB blocks with `promtool tsdb
create-blocks-from openmetrics`; `PrometheusProcess` runs Prometheus on a free loopback port (retrying
when another process takes the port first), can be stopped and started again on the same port and
data, and reloads its config on SIGHUP.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import end_process, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def require_prometheus() -> None:
    if not (Path(PROMETHEUS).is_file() and Path(PROMTOOL).is_file()):
        pytest.skip("prometheus/promtool not installed (Debian: apt-get install -y prometheus)")


def backfill(lines: list[str], data_dir: Path, block: str = "24h") -> None:
    source = data_dir.parent / f"{data_dir.name}.om"
    source.write_text("\n".join(lines + ["# EOF"]) + "\n")
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", f"--max-block-duration={block}",
                    str(source), str(data_dir)], check=True, capture_output=True, text=True)


class PrometheusProcess:
    def __init__(self, root: Path, data_dir: Path, config: str):
        self.root, self.data_dir = root, data_dir
        self.config_path = root / "prometheus.yml"
        self.config_path.write_text(config)
        self.log_path = root / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60) -> None:
        """Start on the last port (or a free one), retrying on another port if it is taken."""
        for _ in range(5):
            self.port = self.port or free_port()
            with self.log_path.open("a") as log:
                self.proc = subprocess.Popen(
                    [PROMETHEUS, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d",
                     "--web.enable-lifecycle"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    pass
                time.sleep(0.2)
            if self.proc.poll() is None:
                pytest.fail(f"prometheus not ready after {timeout}s:\n{self.log()}")
            if "address already in use" not in self.log():
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            self.port = 0  # someone took the port between free_port() and the bind: another one
        pytest.fail(f"prometheus found no free port:\n{self.log()}")

    def reload(self, config: str) -> None:
        self.config_path.write_text(config)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it paused
            end_process(self.proc, 20)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
            return json.loads(r.read())["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 60, what: str = "") -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"no result for {expr} after {timeout}s {what}\n{self.log()[-3000:]}")
            time.sleep(0.5)
