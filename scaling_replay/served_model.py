"""Forecasts from the real served model: `python -m predictor` on free loopback ports, called through the
forecast loop's own v2 client (`forecast_loop.v2_client.V2Client`), every origin of a series in batches.

`ServedModel(model_dir)` starts the predictor (again on new ports if another process took one before it
bound) and stops it on exit; `--model-url` points the replay at a predictor that already runs instead.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np

from forecast_loop.config import ModelConfig
from forecast_loop.v2_client import ModelSpec, V2Client

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "perf-predictor"
PORT_TAKEN = re.compile(r"not free|address already in use|Failed to bind", re.IGNORECASE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedModel:
    """`python -m predictor --model_dir DIR` for the duration of a `with` block; `.url` is its base URL."""

    def __init__(self, model_dir: Path, ready_timeout: float = 120.0, attempts: int = 3):
        self.model_dir, self.ready_timeout, self.attempts = Path(model_dir), ready_timeout, attempts
        self.process: Optional[subprocess.Popen] = None
        self.url = ""
        self.log = Path(tempfile.mkstemp(prefix="scaling-replay-predictor-", suffix=".log")[1])

    def __enter__(self) -> "ServedModel":
        for _ in range(self.attempts):
            http_port, grpc_port = _free_port(), _free_port()
            with self.log.open("w") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "predictor", "--model_dir", str(self.model_dir),
                     "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            self.url = f"http://127.0.0.1:{http_port}"
            if self._wait_ready():
                return self
            if not PORT_TAKEN.search(self.log.read_text(errors="replace")):
                break
        self.__exit__(None, None, None)
        raise RuntimeError(f"the predictor did not become ready; its log:\n{self.log.read_text(errors='replace')[-3000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/{MODEL_NAME}/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if exc and exc[0] is None:  # a clean run leaves no log behind; a failed start kept it for its message
            self.log.unlink(missing_ok=True)


def client(url: str, timeout: float = 120.0, max_batch_series: int = 2048) -> V2Client:
    return V2Client(ModelConfig(url=url.rstrip("/"), name=MODEL_NAME, timeout=timeout,
                                max_batch_series=max_batch_series, step=None))


def origin_forecasts(model: V2Client, spec: ModelSpec, values: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """([len(values), H] of `quantile`, the same of the model's median): row j is the forecast made at the
    end of bucket j from the W buckets ending there; NaN for the first W - 1 rows (no full window). The
    median is the model's quantile nearest 0.5, as the forecast loop picks it."""
    if quantile not in spec.quantiles:
        raise ValueError(f"the model serves quantiles {spec.quantiles}, not {quantile:g}")
    out = np.full((2, len(values), spec.horizon), np.nan)
    if len(values) < spec.window:
        return out[0], out[1]
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(values, dtype=np.float64), spec.window)
    forecasts = model.forecast(windows, spec)
    out[:, spec.window - 1:] = forecasts[[spec.quantiles.index(quantile), spec.median_index]]
    return out[0], out[1]
