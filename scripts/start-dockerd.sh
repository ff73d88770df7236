#!/usr/bin/env bash
# Make a Docker engine reachable, starting dockerd in the background if none is.
# Idempotent: does nothing when `docker info` already answers. No systemd needed.
#   DOCKERD_LOG      where dockerd's output goes   (default /tmp/dockerd.log)
#   DOCKERD_TIMEOUT  seconds to wait for the socket (default 60)
set -euo pipefail

log=${DOCKERD_LOG:-/tmp/dockerd.log}
timeout=${DOCKERD_TIMEOUT:-60}

if ! command -v docker >/dev/null 2>&1; then
    echo "start-dockerd: the docker CLI is not installed (apt-get install -y docker.io)" >&2
    exit 1
fi

if docker info >/dev/null 2>&1; then
    echo "start-dockerd: a Docker engine is already reachable"
    exit 0
fi

if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "${DOCKER_HOST}" ]; then
    echo "start-dockerd: DOCKER_HOST=${DOCKER_HOST} is remote and not answering; not starting a local engine" >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-dockerd: dockerd is not installed (apt-get install -y docker.io)" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "start-dockerd: starting dockerd needs root" >&2
    exit 1
fi

# Another start may be under way (pid file present and alive): only wait for it.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "start-dockerd: dockerd (pid $(cat "$pidfile")) is starting; waiting for it"
else
    rm -f "$pidfile"
    echo "start-dockerd: starting dockerd (log: $log)"
    # setsid: the engine outlives this shell and is not in its process group.
    setsid nohup dockerd >"$log" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$timeout"); do
    if docker info >/dev/null 2>&1; then
        echo "start-dockerd: Docker engine is up ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 1
done

echo "start-dockerd: no Docker engine after ${timeout}s; last lines of $log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
