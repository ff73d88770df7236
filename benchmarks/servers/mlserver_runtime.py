"""A minimal custom MLServer runtime around the same estimator (MLServer 1.7.1, its own venv).

model-settings.json (written by benchmarks/run.py):
    {"name": "perf-predictor", "implementation": "mlserver_runtime.ForecastRuntime",
     "parameters": {"uri": "<model dir>", "extra": {"kind": "project"}}}        # or "kind": "reference"

`predict`: the first input decoded with MLServer's NumpyCodec -> forecaster.predict -> one FP32 output
per quantile encoded with NumpyCodec, the way MLServer's own docs write a custom runtime.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parent.parent), str(HERE.parent)):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
from mlserver import MLModel  # noqa: E402
from mlserver.codecs import NumpyCodec  # noqa: E402
from mlserver.types import InferenceRequest, InferenceResponse  # noqa: E402
from mlserver.utils import get_model_uri  # noqa: E402


class ForecastRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        extra = (self._settings.parameters.extra or {}) if self._settings.parameters else {}
        if extra.get("kind") == "reference":
            import reference_model

            self._forecaster = reference_model.load(uri)
            self._output_names = self._forecaster.output_names
        else:
            from forecaster import artifact

            self._forecaster, card = artifact.load(uri)
            self._output_names = list(card["output_names"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        history = NumpyCodec.decode_input(payload.inputs[0])
        forecast = self._forecaster.predict(np.asarray(history, dtype=np.float64))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, np.ascontiguousarray(block))
                     for name, block in zip(self._output_names, forecast)],
        )
