#!/usr/bin/env bash
# Start a local OCI registry (Debian's docker-registry) on 127.0.0.1:${REGISTRY_PORT:-5000}
# with filesystem storage, unless one already answers there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
port=${REGISTRY_PORT:-5000}
if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then exit 0; fi
if ! command -v docker-registry >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null
fi
dir=${REGISTRY_DIR:-/tmp/airflow-infra-registry}
mkdir -p "$dir/data"
cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
YAML
setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 < /dev/null &
wait_until "registry on 127.0.0.1:$port" "$dir/registry.log" curl -fsS "http://127.0.0.1:$port/v2/"
