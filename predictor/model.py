"""The KServe model: load a verified model directory, forecast in micro-batches off the event loop."""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Dict, Optional

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.metrics import PREDICT_HIST_TIME, get_labels
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferRequest

from forecaster import artifact
from forecaster.model import QuantileForecaster

from . import codec, http, metrics
from .batching import Done, MicroBatcher, Pending, until_done

logger = logging.getLogger("perf_predictor")


class PerfPredictor(Model):
    def __init__(self, name: str, model_dir: str, max_batch_delay_ms: float = 0.0, max_batch_series: int = 4096,
                 predict_threads: int = 1, inline_max_series: int = 0):
        super().__init__(name)
        self.model_dir = model_dir
        self.predict_threads = predict_threads
        self.max_batch_delay_ms = max_batch_delay_ms
        self.max_batch_series = max_batch_series
        self.inline_max_series = inline_max_series
        self.forecaster: Optional[QuantileForecaster] = None
        self.card: dict = {}
        self._batcher: Optional[MicroBatcher] = None
        self._predict_seconds = None  # KServe's predict-time histogram for this model
        self._register()

    def _register(self) -> None:
        http.SERVED[self.name] = self
        http.install()

    def __getstate__(self) -> dict:
        # --workers > 1 pickles the loaded model into each worker process; threads do not travel.
        return {**self.__dict__, "_batcher": None, "_predict_seconds": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._register()  # each worker process has its own FastAPI app
        if self.forecaster is not None:
            self.forecaster.compile(self.predict_threads)  # JIT once per process, before the first request

    def load(self) -> bool:
        """Raises artifact.ModelLoadError with what is wrong; ready only after a verified load and the
        trees compiled."""
        started = time.perf_counter()
        self.forecaster, self.card = artifact.load(self.model_dir)
        self.forecaster.compile(self.predict_threads)
        seconds = time.perf_counter() - started
        metrics.record_model(self.name, self.card, seconds)
        spec = self.forecaster.spec
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

    def get_input_types(self) -> list[dict]:
        return [{"name": codec.INPUT_NAME, "datatype": "FP32", "shape": [-1, self.forecaster.spec.window]}]

    def get_output_types(self) -> list[dict]:
        horizon = self.forecaster.spec.horizon
        return [{"name": n, "datatype": codec.OUTPUT_DATATYPE, "shape": [-1, horizon]}
                for n in self.forecaster.spec.output_names]

    def _batcher_here(self) -> MicroBatcher:
        if self._batcher is None:  # one per process: threads and metric children do not travel
            self._batcher = MicroBatcher(partial(self.forecaster.predict, threads=self.predict_threads),
                                         self.max_batch_delay_ms / 1000,
                                         self.max_batch_series, metrics.PREDICT_BATCH.labels(self.name).observe,
                                         self.inline_max_series)
        return self._batcher

    def _predict_timer(self):
        if self._predict_seconds is None:
            self._predict_seconds = PREDICT_HIST_TIME.labels(**get_labels(self.name))
        return self._predict_seconds

    def _count(self, history: np.ndarray, protocol: str) -> None:
        metrics.BATCH_SIZE.labels(self.name, protocol).observe(len(history))
        metrics.SERIES.labels(self.name, protocol).inc(len(history))

    async def forecast(self, history: np.ndarray, protocol: str, inline: bool) -> np.ndarray:
        """[n, W] -> [n_quantiles, n, H], batched with whatever else is waiting. `inline`: a small batch
        may be predicted on the event loop; true for requests that came through uvicorn or the native
        gRPC front, false for grpcio's server, which hands calls to the loop one by one (batching.py)."""
        self._count(history, protocol)
        return await self._batcher_here().forecast(history, inline=inline)

    async def infer_v2_rest(self, body: bytes, json_length: Optional[int]) -> tuple[bytes, Optional[int]]:
        """The REST fast path (predictor/fastpath.py): body bytes in, reply bytes out."""
        spec = self.forecaster.spec
        history, reply = codec.decode_v2_body(body, json_length, spec.window)
        with self._predict_timer().time():
            forecasts = await self.forecast(history, "rest", inline=True)
        return codec.encode_v2_body(reply, self.name, self.version, spec.output_names, forecasts)

    def submit_grpc(self, request: Any, inline: bool, done: Done) -> Pending:
        """gRPC ModelInfer, protobuf request to the serialized reply, without a coroutine: the request is
        checked now (InvalidInput raised here), and `done` gets the reply bytes as soon as its rows are
        predicted, before the predict time is recorded (grpc_bridged.py)."""
        spec = self.forecaster.spec
        history = codec.decode_grpc(request, spec.window)
        self._count(history, "grpc")
        batcher, timer, started = self._batcher_here(), self._predict_timer(), time.perf_counter()

        def predicted(forecasts: Optional[np.ndarray], exc: Optional[BaseException]) -> None:
            message = None
            if exc is None:
                try:
                    message = codec.encode_grpc(request, self.name, self.version, spec.output_names, forecasts)
                except Exception as encode_exc:  # an output the model does not have
                    exc = encode_exc
            done(message, exc)
            timer.observe(time.perf_counter() - started)

        return batcher.submit(history, inline, predicted)

    async def infer_grpc(self, request: Any, inline: bool) -> bytes:
        """`submit_grpc` for a coroutine (grpc_fastpath.py)."""
        return await until_done(lambda done: self.submit_grpc(request, inline, done))

    async def __call__(self, body: Any, headers: Optional[Dict[str, str]] = None,
                       verb: InferenceVerb = InferenceVerb.PREDICT):
        """KServe's path (v1 REST): tell the metrics middleware why a request was rejected."""
        try:
            return await super().__call__(body, headers, verb)
        except InvalidInput as exc:
            http.note_rejection(getattr(exc, "code", None))
            raise

    async def predict(self, payload: Any, headers: Dict[str, str] = None) -> Any:
        window, names = self.forecaster.spec.window, self.forecaster.spec.output_names
        if isinstance(payload, InferRequest):
            protocol = "grpc" if payload.from_grpc else "rest"
            forecasts = await self.forecast(codec.decode_v2(payload, window), protocol, inline=protocol == "rest")
            return codec.encode_v2(payload, self.name, self.version, names, forecasts)
        forecasts = await self.forecast(codec.decode_v1(payload, window), "rest", inline=True)
        return codec.encode_v1(names, forecasts)
