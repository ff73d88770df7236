#!/usr/bin/env bash
# The native gRPC front's tests with predictor/_h2.c under AddressSanitizer and UndefinedBehaviorSanitizer
# (a CI step, .ci/run): the sanitized build is loaded by the test process and by every server it starts
# (tests/h2_sanitized/sitecustomize.py); any sanitizer report, from any process, fails the run.
#   scripts/test-h2-sanitized.sh [pytest args]      default: the gRPC tests and the corpus replay
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
so="$(bash scripts/build-h2-sanitized.sh)"
reports="$(mktemp -d)"
trap 'rm -rf "$reports"' EXIT
export PERF_PREDICTOR_H2_SO="$PWD/$so"
export PYTHONPATH="$PWD/tests/h2_sanitized${PYTHONPATH:+:$PYTHONPATH}"
# Python is not built with ASan: the runtime comes first, preloaded into every Python process (and only
# those: tests/h2_sanitized/sitecustomize.py). CPython keeps some memory to the end on purpose, so leaks
# are not checked here (the fuzzer measures memory instead). PYTHONMALLOC=malloc hands every Python object
# to ASan's allocator, so a reference the C code drops too early is a use-after-free report, not silent
# reuse of a pymalloc block.
export PERF_PREDICTOR_SANITIZER_RUNTIME="$(${CC:-cc} -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:log_path=$reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
export PYTHONMALLOC=malloc
# (not the test of KServe's grpcio front, whose server imports _h2 but serves nothing through it and,
# slower to start under ASan, missed the 60 s start-up deadline on a machine at load 15)
[ $# -gt 0 ] || set -- tests/test_h2_session.py tests/test_h2_fuzz_corpus.py tests/test_grpc_native.py \
  tests/test_grpc_front.py tests/test_serving.py -x -q \
  -k "(grpc or h2 or native or kserve_clients or every_protocol or metadata) and not kserve_front"
# the sanitized build is the one a Python process of this environment imports, under the ASan runtime
"$PYTHON" -c 'import os, predictor._h2 as h2
assert h2.__file__ == os.environ["PERF_PREDICTOR_H2_SO"], h2.__file__
assert "libasan" in open("/proc/self/maps").read()'
status=0
"$PYTHON" -m pytest -p no:cacheprovider "$@" || status=$?
if compgen -G "$reports/*" >/dev/null; then
  echo "sanitizer reports:" >&2
  cat "$reports"/* >&2
  exit 1
fi
exit "$status"
