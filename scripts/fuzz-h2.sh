#!/usr/bin/env bash
# Fuzzes the native gRPC front's HTTP/2 session (tests/fuzz/h2_fuzz.py) for a fixed time with atheris
# (libFuzzer), coverage-guided over predictor/_h2.c (clang, -fsanitize=fuzzer-no-link) and over the
# Python of predictor/ that handles the session's events, under AddressSanitizer and UBSan. Starts from
# the repo's corpus (tests/fuzz/corpus/h2); what it finds new goes to build/h2-fuzz/corpus, crashes to
# build/h2-fuzz/. Needs clang and `pip install -e '.[fuzz]'`.
#   scripts/fuzz-h2.sh [--seconds 600] [libFuzzer flags, e.g. -jobs=2]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
seconds=600
if [ "${1:-}" = "--seconds" ]; then
  seconds="$2"
  shift 2
fi
"$PYTHON" -c "import atheris" 2>/dev/null || { echo "atheris is not installed: pip install -e '.[fuzz]'" >&2; exit 2; }
command -v clang >/dev/null || { echo "clang is not installed (apt-get install clang)" >&2; exit 2; }
so="$(bash scripts/build-h2-sanitized.sh --fuzz)"
mkdir -p build/h2-fuzz/corpus
export PERF_PREDICTOR_H2_SO="$PWD/$so"
export PYTHONPATH="$PWD/tests/h2_sanitized:$PWD"
export LD_PRELOAD="$("$PYTHON" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONMALLOC=malloc  # every Python object through ASan's allocator (scripts/test-h2-sanitized.sh)
exec "$PYTHON" -m tests.fuzz.h2_fuzz --seconds "$seconds" -artifact_prefix=build/h2-fuzz/ "$@" \
  build/h2-fuzz/corpus tests/fuzz/corpus/h2
