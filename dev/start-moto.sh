#!/usr/bin/env bash
# Start moto's AWS server (S3, Batch, Logs, IAM, ...) on 127.0.0.1:${MOTO_PORT:-5001} unless one
# answers there. With host networking its Batch backend runs job containers on the local
# Docker engine. Started through dev/moto_server.py, which adds a stand-in for the ECS agent's
# injection of a job definition's `secrets` into the job's environment (moto stores them but
# does not inject them; see that file). Needs .venv (bash dev/setup.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
port=${MOTO_PORT:-5001}
if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then exit 0; fi
log=${MOTO_LOG:-/tmp/airflow-infra-moto.log}
MOTO_DOCKER_NETWORK_MODE=host setsid .venv/bin/python dev/moto_server.py -H 127.0.0.1 -p "$port" >"$log" 2>&1 < /dev/null &
wait_until "moto on 127.0.0.1:$port" "$log" curl -fsS "http://127.0.0.1:$port/moto-api/"
