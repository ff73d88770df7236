"""The KServe model: load a verified model directory, forecast off the event loop."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse

from forecaster import artifact
from forecaster.model import QuantileForecaster

from . import codec, http

logger = logging.getLogger("perf_predictor")


class PerfPredictor(Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.forecaster: Optional[QuantileForecaster] = None
        self.card: dict = {}
        self._executor: Optional[ThreadPoolExecutor] = None
        http.install()

    def __getstate__(self) -> dict:
        # --workers > 1 pickles the loaded model into each worker process; executors do not travel.
        return {**self.__dict__, "_executor": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        http.install()  # each worker process has its own FastAPI app

    def load(self) -> bool:
        """Raises artifact.ModelLoadError with what is wrong; ready only after a verified load."""
        self.forecaster, self.card = artifact.load(self.model_dir)
        spec = self.forecaster.spec
        logger.info(
            "loaded model %s version %s from %s: window %d, horizon %d, outputs %s",
            self.card.get("name"), self.card.get("version"), self.model_dir,
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

    async def _forecast(self, history: np.ndarray) -> np.ndarray:
        # One dedicated thread: the event loop keeps answering health checks while trees run,
        # and requests never compete for cores with each other's OpenMP teams.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.forecaster.predict, history)

    async def predict(self, payload: Any, headers: Dict[str, str] = None) -> Any:
        window, names = self.forecaster.spec.window, self.forecaster.spec.output_names
        if isinstance(payload, InferRequest):
            forecasts = await self._forecast(codec.decode_v2(payload, window))
            return codec.encode_v2(payload, self.name, self.version, names, forecasts)
        forecasts = await self._forecast(codec.decode_v1(payload, window))
        return codec.encode_v1(names, forecasts)
