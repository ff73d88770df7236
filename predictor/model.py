"""The KServe model: load a verified model directory; forecast in micro-batches."""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Dict, Optional

import numpy as np
from kserve import Model
from kserve.model_repository import ModelRepository

from forecaster import artifact
from forecaster.model import QuantileForecaster

from . import codec, jit_cache, metrics
from .admission import Admission
from .batching import FORECAST_NICE, Done, MicroBatcher, Pending, until_done
from .contract import INPUT_NAME, OUTPUT_DATATYPE, HistoryLength

logger = logging.getLogger("perf_predictor")

# The default REST body limit: the largest micro-batch (--max_batch_series series) of W numbers, each
# written as wide as a JSON number gets ("-1.2345678901234567e-308, ", 26 bytes, as Python's json
# writes a float64), plus each row's brackets and room for the rest of the request.
JSON_NUMBER_BYTES = 26
BODY_ROOM_BYTES = 64 * 1024


# The default series limit per request: as many as a body at the default limit holds as binary FP32
# (4 bytes a number rather than up to 26), rounded up to a power of two.
REQUEST_SERIES_PER_BATCH = 8
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # before any model of ours is loaded


def default_max_body_bytes(max_series: int, window: int) -> int:
    return max_series * (window * JSON_NUMBER_BYTES + 4) + BODY_ROOM_BYTES


class PerfPredictor(Model):
    def __init__(self, name: str, model_dir: str, max_batch_delay_ms: float = 0.0, max_batch_series: int = 4096,
                 predict_threads: int = 1, inline_max_series: int = 0, max_request_series: Optional[int] = None,
                 max_body_bytes: Optional[int] = None, max_requests_held: int = 0, forecast_nice: int = FORECAST_NICE):
        super().__init__(name)
        self.max_request_series = max_request_series or REQUEST_SERIES_PER_BATCH * max_batch_series
        self.max_body_bytes = max_body_bytes  # None: default_max_body_bytes, once the window is known
        self.model_dir = model_dir
        self.predict_threads = predict_threads
        self.max_batch_delay_ms = max_batch_delay_ms
        self.max_batch_series = max_batch_series
        self.inline_max_series = inline_max_series
        self.forecast_nice = forecast_nice  # the forecast thread's CPU priority below the loop's (batching.py)
        self.forecaster: Optional[QuantileForecaster] = None
        self.card: dict = {}
        self.history_length: Optional[HistoryLength] = None
        self._batcher: Optional[MicroBatcher] = None
        self.admission = self._admission(max_requests_held)  # per process: the overload bound (admission.py)

    def __getstate__(self) -> dict:
        # --workers > 1 pickles the loaded model into each worker process; threads do not travel.
        return {**self.__dict__, "_batcher": None, "admission": self.admission.limit}  # a new bound in each

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.admission = self._admission(state["admission"])
        if self.forecaster is not None:
            jit_cache.use()
            self.forecaster.compile(self.predict_threads)  # once per process, before the first request

    def _admission(self, limit: int) -> Admission:
        return Admission(limit, on_bound=partial(metrics.record_bound, self.name))

    def load(self) -> bool:
        """Raises artifact.ModelLoadError with what is wrong; ready only after a verified load and the
        trees compiled."""
        started = time.perf_counter()
        jit_cache.use()  # machine code from numba's cache where it has it (jit_cache.py)
        self.forecaster, self.card = artifact.load(self.model_dir)
        self.forecaster.compile(self.predict_threads)
        seconds = time.perf_counter() - started
        spec = self.forecaster.spec
        # the shortest history the model forecasts from: its own, else the card's, else its window
        minimum = getattr(spec, "min_history", None) or self.card.get("min_history") or spec.window
        self.history_length = HistoryLength(spec.window, min(int(minimum), spec.window), self.max_request_series)
        if self.max_body_bytes is None:
            self.max_body_bytes = default_max_body_bytes(self.max_batch_series, spec.window)
        metrics.record_model(self.name, self.card, seconds)
        logger.info(
            "loaded model %s version %s from %s in %.2fs: window %d, horizon %d, outputs %s",
            self.card.get("name"), self.card.get("version"), self.model_dir, seconds,
            spec.window, spec.horizon, ",".join(spec.output_names),
        )
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return str(self.card.get("version", ""))

    @property
    def output_names(self) -> list[str]:
        return list(self.forecaster.spec.output_names)

    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, self.forecaster.spec.window]}]

    def get_output_types(self) -> list[dict]:
        horizon = self.forecaster.spec.horizon
        return [{"name": n, "datatype": OUTPUT_DATATYPE, "shape": [-1, horizon]} for n in self.output_names]

    def _batcher_here(self) -> MicroBatcher:
        if self._batcher is None:  # one per process: threads and metric children do not travel
            self._batcher = MicroBatcher(partial(self.forecaster.predict, threads=self.predict_threads),
                                         self.max_batch_delay_ms / 1000,
                                         self.max_batch_series, metrics.PREDICT_BATCH.labels(self.name).observe,
                                         self.inline_max_series, self.forecast_nice)
        return self._batcher

    def submit(self, history: np.ndarray, protocol: str, inline: bool, done: Done) -> Pending:
        """Queues checked windows [n, W] for the next micro-batch; `done` gets their forecasts
        [n_quantiles, n, H] on the event loop. `inline`: a small batch may be predicted on the event
        loop (false for grpcio's server, which hands calls to the loop one by one: batching.py)."""
        metrics.BATCH_SIZE.labels(self.name, protocol).observe(len(history))
        metrics.SERIES.labels(self.name, protocol).inc(len(history))
        return self._batcher_here().submit(history, inline, done)

    async def forecast(self, history: np.ndarray, protocol: str, inline: bool) -> np.ndarray:
        """`submit` for a coroutine."""
        return await until_done(lambda done: self.submit(history, protocol, inline, done))

    async def predict(self, payload: Any, headers: Dict[str, str] = None) -> Any:
        """KServe's v1 route (`:predict`); the v2 routes are answered by rest.py and grpc_infer.py."""
        forecasts = await self.forecast(codec.decode_v1(payload, self.history_length), "rest", inline=True)
        return codec.encode_v1(self.output_names, forecasts)


def served(registry: ModelRepository, name: str) -> Optional[PerfPredictor]:
    """The model of ours registered under `name` in KServe's registry, if any."""
    model = registry.get_model(name)
    return model if isinstance(model, PerfPredictor) else None


def sole_model(registry: ModelRepository) -> Optional[PerfPredictor]:
    """The model, when the registry holds one model and it is ours (so a request can name no other)."""
    models = registry.get_models()
    if len(models) != 1:
        return None
    model = next(iter(models.values()))
    return model if isinstance(model, PerfPredictor) else None


def body_limit(registry: ModelRepository, name: Optional[str] = None) -> int:
    """The REST body limit of the model of ours named `name`; for any other request, the largest of
    our models' limits."""
    model = served(registry, name) if name else None
    if model is not None and model.max_body_bytes:
        return model.max_body_bytes
    limits = [m.max_body_bytes for m in (served(registry, n) for n in list(registry.get_models())) if m is not None]
    return max((limit for limit in limits if limit), default=DEFAULT_MAX_BODY_BYTES)
