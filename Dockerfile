# perf-predictor: KServe custom predictor (REST v2 on 8080, gRPC v2 on 8081, both in one process).
#
#   docker build -t perf-predictor .                         # runtime image (the default, last stage)
#   docker build --target dev -t perf-predictor:dev .        # + restarts on predictor/**/*.py changes
#   docker build --build-arg BASE_IMAGE=registry.example/python:3.11-slim-bookworm .
#
# BASE_IMAGE must be a Debian-like image with python3 (>= 3.11: tomllib) and its venv module; builds that
# cannot pull (air-gapped, CI) pass a locally built one (scripts/build-base-image.sh). The image
# runs as UID/GID 10001 with a read-only root filesystem; only /tmp needs to be writable.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: a virtualenv with the dependencies and the project wheel, and the default model.
FROM ${BASE_IMAGE} AS builder

# Optional package index settings for builds behind a mirror; empty means pip's defaults.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python3 -m venv /opt/venv

# Dependencies first, from pyproject.toml alone: this layer is reused until the dependencies change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --only-binary=:all: -r /tmp/requirements.txt

# The default model (offline, built-in synthetic workload) where the predictor loads by default. It
# depends on forecaster/ and training/ only, so editing predictor/ does not retrain it.
COPY forecaster ./forecaster
COPY training ./training
RUN python -m training --out /mnt/models

# The project itself, as a wheel (no dependencies: they are all in already); then trim the venv. Its one
# compiled part, predictor/_h2.c (the native gRPC server), needs a C compiler, Python's headers and
# libnghttp2 here; the build fails rather than ship an image whose gRPC port falls back to grpcio.
# Shared libraries lose their symbol tables (strip --strip-unneeded; not auditwheel's vendored *.libs,
# which stripping breaks), and the imports that serving needs are checked after.
# hadolint ignore=DL3008
RUN headers=""; \
    python3 -c "import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_path('include') + '/Python.h'))" \
        || headers=python3-dev; \
    apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev binutils libnghttp2-14 $headers \
    && rm -rf /var/lib/apt/lists/*
COPY predictor ./predictor
COPY forecast_loop ./forecast_loop
COPY pyproject.toml setup.py README* LICENSE* ./
RUN pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && pip install --no-deps /tmp/wheels/*.whl \
    && python -I -c "import predictor._h2" \
    && pip uninstall --yes pip setuptools \
    && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} + \
    && { find /opt/venv/lib -name '*.so*' -type f -not -path '*.libs/*' -exec strip --strip-unneeded {} + || true; } \
    && python -I -c "import predictor._h2, predictor.__main__, forecast_loop.__main__, numba, llvmlite.binding, sklearn.ensemble, kserve, uvloop" \
    && python -m compileall -q -j 0 /opt/venv/lib > /dev/null

# The forecaster's numba functions compiled now, into a cache the read-only image carries: a start-up
# loads machine code instead of compiling it (predictor/jit_cache.py). A generic x86-64 target, so the
# cache is valid on whatever CPU the pod lands on; each start copies it to the writable /tmp.
ENV NUMBA_CPU_NAME=generic
RUN NUMBA_CACHE_DIR=/opt/jit-cache python -I -m predictor.jit_cache /mnt/models

# ---------------------------------------------------------------------------------------------
# app: the slim runtime — the base image, the virtualenv, the model, a non-root user.
FROM ${BASE_IMAGE} AS app

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    NUMBA_CPU_NAME=generic \
    NUMBA_CACHE_DIR=/tmp/jit-cache \
    PERF_PREDICTOR_JIT_SEED=/opt/jit-cache

# libnghttp2 serves the gRPC port inside the server (predictor/grpc_server.py); unpinned: the soname is
# in the package's name, and Debian's security updates should reach the image with every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnghttp2-14 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

RUN groupadd --system --gid 10001 predictor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
         --shell /usr/sbin/nologin predictor

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /mnt/models /mnt/models
COPY --from=builder /opt/jit-cache /opt/jit-cache

USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "predictor"]

# ---------------------------------------------------------------------------------------------
# dev: for `skaffold dev`. Skaffold syncs predictor/**/*.py into /tmp/dev (the only writable path
# under a read-only root filesystem); watchfiles (a KServe dependency) restarts the server when a
# synced file changes. The working directory comes first on sys.path, so /tmp/dev/predictor wins
# over the installed package. Container args (the KServe flags) are passed through.
FROM app AS dev
COPY --chown=10001:10001 predictor /opt/dev-src/predictor
# the compiled part is not synced: the one built into the venv goes beside the synced sources
RUN cp /opt/venv/lib/python3*/site-packages/predictor/_h2.*.so /opt/dev-src/predictor/
ENTRYPOINT ["/bin/sh", "-c", "mkdir -p /tmp/dev && cp -R /opt/dev-src/predictor /tmp/dev/ && cd /tmp/dev && exec watchfiles --target-type command --filter python --sigint-timeout 8 \"python -m predictor $*\" /tmp/dev/predictor", "dev"]

# ---------------------------------------------------------------------------------------------
# runtime: the default target (last stage).
FROM app AS runtime
