#!/usr/bin/env bash
# Start the fake Kubernetes API (dev/fake_kube_api.py: a TEST DOUBLE that runs each pod as a
# Docker container, not a Kubernetes) on 127.0.0.1:${FAKE_KUBE_PORT:-5002} unless one answers
# there, and write a kubeconfig for it to ${FAKE_KUBECONFIG:-/tmp/airflow-infra-fake-kube.yaml}.
# Needs .venv (bash dev/setup.sh) and a Docker engine (dev/start-docker.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
port=${FAKE_KUBE_PORT:-5002}
kubeconfig=${FAKE_KUBECONFIG:-/tmp/airflow-infra-fake-kube.yaml}
cat >"$kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://127.0.0.1:$port"}}]
users: [{name: fake, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: default}}]
current-context: fake
YAML
if curl -fsS "http://127.0.0.1:$port/version" >/dev/null 2>&1; then exit 0; fi
log=${FAKE_KUBE_LOG:-/tmp/airflow-infra-fake-kube.log}
setsid .venv/bin/python dev/fake_kube_api.py --port "$port" >"$log" 2>&1 < /dev/null &
wait_until "fake Kubernetes API (test double) on 127.0.0.1:$port" "$log" curl -fsS "http://127.0.0.1:$port/version"
