#!/usr/bin/env bash
# Build the perf-predictor image (`make image`).
#
#   IMAGE          tag to build                  (default perf-predictor:<version in pyproject.toml>,
#                  which is the chart's default image: repository perf-predictor, tag appVersion)
#   TARGET         Dockerfile stage: runtime|dev (default runtime)
#   BASE_IMAGE     base image; when unset: the official python:3.11-slim-bookworm if it is present or
#                  can be pulled, else a locally built Debian base (scripts/build-base-image.sh, which
#                  needs root and debootstrap) — for machines and CI that reach no image registry
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST
#                  passed to the build when set in the environment (http/https indexes only), for
#                  builds behind a package mirror
#   METRICS_FILE   if set, write {"image", "target", "base_image", "base_image_seconds" (0 when it was
#                  already there), "size_bytes", "build_seconds" (docker build alone)} there as JSON
#   DOCKER_BUILD_FLAGS  extra flags for `docker build` (e.g. --no-cache, --pull)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/pyproject.toml" | head -n1)
image=${IMAGE:-perf-predictor:${version:-latest}}
target=${TARGET:-runtime}
official=python:3.11-slim-bookworm
local_base=perf-predictor-base:bookworm

docker info >/dev/null 2>&1 || { echo "build-image: no Docker engine reachable (bash scripts/start-dockerd.sh starts one)" >&2; exit 1; }

base=${BASE_IMAGE:-}
base_seconds=0
if [ -z "$base" ]; then
    if docker image inspect "$official" >/dev/null 2>&1 || timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
        base=$official
    else
        echo "build-image: $official cannot be pulled; using the local base $local_base"
        base_start=$(date +%s)
        BASE_IMAGE=$local_base bash "$here/build-base-image.sh"
        base_seconds=$(( $(date +%s) - base_start ))
        base=$local_base
    fi
fi

args=(--build-arg "BASE_IMAGE=$base" --target "$target" -t "$image")
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
    value=${!var:-}
    # Only network indexes make sense inside the build; file:// ones are the host's own.
    if [ "$var" != PIP_TRUSTED_HOST ]; then
        kept=()
        for url in $value; do
            case "$url" in http://*|https://*) kept+=("$url") ;; esac
        done
        value=${kept[*]:-}
    fi
    [ -n "$value" ] && args+=(--build-arg "$var=$value")
done
# shellcheck disable=SC2206
extra=(${DOCKER_BUILD_FLAGS:-})

echo "build-image: building $image (target $target) on $base"
start=$(date +%s)
docker build "${args[@]}" "${extra[@]}" "$root"
seconds=$(( $(date +%s) - start ))
size=$(docker image inspect --format '{{.Size}}' "$image")
echo "build-image: $image built in ${seconds}s, $(awk -v s="$size" 'BEGIN {printf "%.0f MB", s/1e6}')"

if [ -n "${METRICS_FILE:-}" ]; then
    mkdir -p "$(dirname "$METRICS_FILE")"
    printf '{"image": "%s", "target": "%s", "base_image": "%s", "base_image_seconds": %s, "size_bytes": %s, "build_seconds": %s}\n' \
        "$image" "$target" "$base" "$base_seconds" "$size" "$seconds" >"$METRICS_FILE"
fi
