#!/usr/bin/env bash
# predictor/_h2.c built a second time, under AddressSanitizer and UndefinedBehaviorSanitizer, for tests
# and fuzzing only (never installed): prints the path of the .so it wrote.
#   scripts/build-h2-sanitized.sh [OUT_DIR]          gcc; OUT_DIR defaults to build/h2-sanitized
#   scripts/build-h2-sanitized.sh --fuzz [OUT_DIR]   clang with -fsanitize=fuzzer-no-link too (atheris'
#                                                    coverage of the C code); defaults to build/h2-fuzz
# Load it with scripts/test-h2-sanitized.sh (gcc build) or tests/fuzz/h2_fuzz.py (fuzz build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
sanitize="address,undefined"
out=build/h2-sanitized
compiler="${CC:-cc}"
link=(-fsanitize="$sanitize")  # gcc: the .so needs libasan and libubsan, which the process preloads
if [ "${1:-}" = "--fuzz" ]; then
  shift
  out=build/h2-fuzz
  compiler=clang
  sanitize="address,undefined,fuzzer-no-link"
  link=()  # clang's runtime, with libFuzzer, comes from atheris' asan_with_fuzzer.so, preloaded
fi
out="${1:-$out}"
mkdir -p "$out"
include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
suffix="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
so="$out/_h2$suffix"
# -O1 and frame pointers: stacks a report can be read by; no recovery: the first finding aborts. The
# process preloads the sanitizer runtime: it has to come before every other library.
"$compiler" -c -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize="$sanitize" -fno-sanitize-recover=all \
  -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -I"$include" predictor/_h2.c -o "$out/_h2.o"
"$compiler" -shared "${link[@]}" "$out/_h2.o" -l:libnghttp2.so.14 -o "$so"
echo "$so"
