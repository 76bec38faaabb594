#!/usr/bin/env bash
# Make the local base image (Debian + Python 3, no Docker Hub needed) with mmdebstrap, using
# this machine's own apt sources, and import it into the Docker engine. Cached: the root
# filesystem tarball is kept and reused; the image is skipped when already present.
#   bash dev/base-image.sh [IMAGE]      (default: airflow-infra/base:bookworm)
set -euo pipefail
image=${1:-airflow-infra/base:bookworm}
suite=${SUITE:-bookworm}
cache=${AIRFLOW_INFRA_CACHE:-$HOME/.cache/airflow-infra}
if docker image inspect "$image" >/dev/null 2>&1; then echo "$image present"; exit 0; fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
mkdir -p "$cache"
tarball="$cache/base-$suite.tar"
if [ ! -s "$tarball" ]; then
    mmdebstrap --quiet --format=tar --variant=apt --include=python3,python3-venv,ca-certificates \
        --aptopt='APT::Install-Recommends "false"' "$suite" "$tarball.partial"
    mv "$tarball.partial" "$tarball"
fi
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image imported"
