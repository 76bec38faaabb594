#!/usr/bin/env bash
# Start a Docker engine on this machine if none answers (Debian's docker.io, as root).
# Containers and builds use host networking: there is no bridge here.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
log=${DOCKERD_LOG:-/tmp/airflow-infra-dockerd.log}
setsid dockerd --iptables=false --ip6tables=false --bridge=none >"$log" 2>&1 < /dev/null &
wait_until "docker engine" "$log" docker info
