#!/bin/sh
# Make a Docker engine reachable for the container suite (CI and developers).
#
# As root, install docker-compose when it is missing. When `docker info`
# already answers, do nothing more. Otherwise, as root on
# Debian: install docker.io when dockerd is missing, start dockerd in the
# background (log in $CWEB_DOCKERD_LOG, default /var/log/cweb-dockerd.log)
# and wait up to 60 s for it. Without root it says what is missing and exits
# 0: the container tests then skip with that reason.
set -eu

LOG="${CWEB_DOCKERD_LOG:-/var/log/cweb-dockerd.log}"

# docker-compose (Debian's 1.29) drives the real docker-compose.yml in the container suite.
if [ "$(id -u)" = 0 ] && ! command -v docker-compose >/dev/null 2>&1; then
    echo "ensure-docker: installing docker-compose"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    fi
fi
if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-docker: no Docker engine reachable and not root: the container tests will skip" >&2
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "ensure-docker: installing docker.io"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "ensure-docker: starting dockerd (log: $LOG)"
    mkdir -p "$(dirname "$LOG")"
    nohup dockerd >>"$LOG" 2>&1 </dev/null &
fi
i=0
while [ "$i" -lt 60 ]; do
    if docker info >/dev/null 2>&1; then
        echo "ensure-docker: engine ready after ${i}s"
        exit 0
    fi
    i=$((i + 1))
    sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
