"""Put this directory first on PYTHONPATH and set PERF_PREDICTOR_H2_SO to a sanitized build of
predictor/_h2.c (scripts/build-h2-sanitized.sh): every Python process started with that environment (the
test process, the servers it starts, their workers, `python -c` children) then imports predictor._h2 from
that file instead of the installed one. scripts/test-h2-sanitized.sh sets both.

With PERF_PREDICTOR_SANITIZER_RUNTIME (the sanitizer's runtime library) each such process starts itself
again with that library preloaded, and takes it out of the environment its own children get: Python runs
under the sanitizer, the tools the tests start (curl, h2load) do not (curl hangs at start with ASan's
runtime preloaded)."""
import importlib.machinery
import importlib.util
import os
import sys

SO = os.environ.get("PERF_PREDICTOR_H2_SO")
RUNTIME = os.environ.get("PERF_PREDICTOR_SANITIZER_RUNTIME")


class SanitizedH2:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "predictor._h2":
            return None
        return importlib.util.spec_from_file_location(name, SO, loader=importlib.machinery.ExtensionFileLoader(name, SO))


if SO:
    if not os.path.isfile(SO):
        raise SystemExit(f"PERF_PREDICTOR_H2_SO={SO} is not a file")
    if RUNTIME and os.environ.get("LD_PRELOAD") != RUNTIME:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": RUNTIME})
    os.environ.pop("LD_PRELOAD", None)
    sys.meta_path.insert(0, SanitizedH2)
