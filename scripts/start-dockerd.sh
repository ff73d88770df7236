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

# A dockerd already starting (pid file naming a live, non-zombie dockerd) is waited for; otherwise
# (none, or a stale pid file left by a killed engine) one is started. If the one we waited for dies,
# we start our own.
pidfile=/var/run/docker.pid
dockerd_alive() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
        && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

own=""      # pid of the dockerd this script started
waiting=""  # set once we have reported waiting for someone else's
attempts=0
# Once we have started one, a live dockerd process means it is still starting: dockerd writes the pid
# file only once partly up, and reading a missing file as "exited" started a second engine beside the
# first, and then neither came up.
own_alive() {
    [ -n "$own" ] || return 1
    local stat
    for stat in /proc/[0-9]*/stat; do
        [ "$(cat "${stat%stat}comm" 2>/dev/null)" = dockerd ] && [ "$(awk '{print $3}' "$stat" 2>/dev/null)" != Z ] \
            && return 0
    done
    return 1
}
for _ in $(seq 1 "$timeout"); do
    if docker info >/dev/null 2>&1; then
        echo "start-dockerd: Docker engine is up ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    if ! own_alive && ! dockerd_alive; then
        if [ -n "$own" ]; then
            # Right after an engine was killed, its containerd may still be going away and the new
            # dockerd gives up on it; a couple more tries get past that.
            if [ "$attempts" -ge 3 ]; then
                echo "start-dockerd: dockerd exited $attempts times; last lines of $log:" >&2
                tail -n 30 "$log" >&2 || true
                exit 1
            fi
            echo "start-dockerd: dockerd exited; retrying"
            sleep 2
        fi
        attempts=$((attempts + 1))
        rm -f "$pidfile"
        echo "start-dockerd: starting dockerd (log: $log)"
        # setsid: the engine outlives this shell and is not in its process group.
        setsid nohup dockerd >"$log" 2>&1 </dev/null &
        own=$!
    elif [ -z "$own" ] && [ -z "$waiting" ]; then
        waiting=1
        echo "start-dockerd: dockerd (pid $(cat "$pidfile")) is starting; waiting for it"
    fi
    sleep 1
done

echo "start-dockerd: no Docker engine after ${timeout}s; last lines of $log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
