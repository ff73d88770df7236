"""Numba's on-disk cache for the forecaster's compiled functions, so a process that starts loads
machine code instead of compiling it (worker processes, restarts, new pods).

Every numba function in `forecaster` caches, whatever its decorator says, in NUMBA_CACHE_DIR (default
~/.cache/perf-predictor/numba). The image compiles them at build time into a read-only seed
(PERF_PREDICTOR_JIT_SEED) for a portable CPU target (NUMBA_CPU_NAME=generic: valid on any x86-64 node),
and `use()` copies the seed into NUMBA_CACHE_DIR (under the writable /tmp) first. Numba checks each
entry against its source file and CPU target; a function the cache lacks is compiled and cached.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Optional

SEED_ENV = "PERF_PREDICTOR_JIT_SEED"
logger = logging.getLogger("perf_predictor")
_cache_dir: Optional[str] = None


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "perf-predictor", "numba")


def use() -> str:
    """Before the forecaster's first compile in this process; worker processes inherit the directory
    by the environment. Returns the cache directory."""
    global _cache_dir
    if _cache_dir is not None:
        return _cache_dir
    _cache_dir = os.environ.setdefault("NUMBA_CACHE_DIR", default_dir())
    seed = os.environ.get(SEED_ENV)
    if seed and os.path.isdir(seed) and os.path.realpath(seed) != os.path.realpath(_cache_dir):
        try:
            shutil.copytree(seed, _cache_dir, dirs_exist_ok=True)
        except OSError as exc:  # compiled as usual then
            logger.warning("numba cache seed %s not copied to %s: %s", seed, _cache_dir, exc)
    import numba

    import forecaster.model  # noqa: F401  (imports every module that holds compiled functions)

    numba.config.CACHE_DIR = _cache_dir  # numba read the environment when it was imported
    for name, module in list(sys.modules.items()):
        if name == "forecaster" or name.startswith("forecaster."):
            for value in vars(module).values():
                if isinstance(value, numba.core.dispatcher.Dispatcher):
                    value.enable_caching()
    return _cache_dir


def warm(model_dir: str, threads: int = 2) -> str:
    """Compiles (and so caches) what serving runs: the model's load-time compile, then forecasts of one
    and of 1,024 series, on one thread and on `threads`. The image build runs this (`python -m
    predictor.jit_cache MODEL_DIR`)."""
    import numpy as np

    from forecaster import artifact

    cache_dir = use()
    forecaster, _card = artifact.load(model_dir)
    forecaster.compile(threads)
    rng = np.random.default_rng(0)
    for rows in (1, 1024):
        history = 100 + np.cumsum(rng.normal(size=(rows, forecaster.spec.window)), axis=1)
        for n in (1, threads):
            forecaster.predict(history, threads=n)
    return cache_dir


if __name__ == "__main__":
    print("numba cache in", warm(sys.argv[1]))
