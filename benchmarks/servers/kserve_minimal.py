"""The "straightforward" KServe custom predictor: a minimal `kserve.Model` around the same estimator.

    python benchmarks/servers/kserve_minimal.py --model_dir DIR --http_port P --grpc_port G
    python benchmarks/servers/kserve_minimal.py --reference FILE ...   # the 36-model reference instead

Synchronous `predict`: InferRequest -> numpy -> forecaster.predict -> InferResponse, nothing else (no
validation beyond what KServe does, no custom codec, no batching). Outputs are given as Python lists:
kserve 0.21's gRPC encoder fails on numpy arrays of more than one element in InferOutput data.
KServe's own flags and defaults apply (so, as shipped, uvicorn's access line and KServe's timing lines
are logged for every REST request).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one OpenMP team per process, as for every server here

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

import numpy as np  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server  # noqa: E402


class Forecaster(Model):
    def __init__(self, name: str, model_dir: str | None, reference: str | None):
        super().__init__(name)
        self.model_dir, self.reference = model_dir, reference
        self.forecaster = None
        self.output_names: list[str] = []

    def load(self) -> bool:
        if self.reference:
            import reference_model

            self.forecaster = reference_model.load(self.reference)
            self.output_names = self.forecaster.output_names
        else:
            from forecaster import artifact

            self.forecaster, card = artifact.load(self.model_dir)
            self.output_names = list(card["output_names"])
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        history = payload.inputs[0].as_numpy()
        forecast = self.forecaster.predict(np.asarray(history, dtype=np.float64))  # [Q, n, H]
        outputs = [InferOutput(name=name, shape=list(block.shape), datatype="FP32", data=block.ravel().tolist())
                   for name, block in zip(self.output_names, forecast)]
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = model_server.parser
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--reference", default=None)
    args, _ = parser.parse_known_args()
    model = Forecaster(args.model_name, args.model_dir, args.reference)
    model.load()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()
