"""`python -m predictor`: serve a model directory with KServe's ModelServer and KServe's own flags."""
from __future__ import annotations

import os

# One OpenMP/BLAS thread per process unless the operator says otherwise: the forecast thread must not
# fight the event loop (or other workers) for the cores. Set before numpy/sklearn are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from kserve import ModelServer, model_server  # noqa: E402

from forecaster.artifact import ModelLoadError  # noqa: E402

from .model import PerfPredictor  # noqa: E402

DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model

logger = logging.getLogger("perf_predictor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m predictor", parents=[model_server.parser])
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help="model directory to serve")
    parser.set_defaults(model_name="perf-predictor")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, _ = build_parser().parse_known_args(argv)
    model = PerfPredictor(args.model_name, args.model_dir)
    try:
        model.load()
    except ModelLoadError as exc:
        logging.basicConfig(level=logging.INFO)
        logger.error("model %s not loaded from %s: %s", args.model_name, args.model_dir, exc)
        return 1
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
