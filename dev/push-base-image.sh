#!/usr/bin/env bash
# Push the local base image (dev/base-image.sh) to the local registry, where the daemonless
# builder reads it: it extends the base from the registry and never needs a Docker engine.
#   bash dev/push-base-image.sh [IMAGE] [REGISTRY]   (defaults: airflow-infra/base:bookworm 127.0.0.1:5000)
set -euo pipefail
image=${1:-airflow-infra/base:bookworm}
registry=${2:-127.0.0.1:${REGISTRY_PORT:-5000}}
name=${image%:*}
tag=${image##*:}
accept="application/vnd.docker.distribution.manifest.v2+json"
if curl -fs -o /dev/null -I -H "Accept: $accept" "http://$registry/v2/$name/manifests/$tag"; then
    echo "$registry/$image present"; exit 0
fi
docker tag "$image" "$registry/$image"
docker push -q "$registry/$image" >/dev/null
echo "$registry/$image pushed"
