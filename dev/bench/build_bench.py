"""Benchmark: a cold image build with the project's recipe vs a plain `pip install` Dockerfile,
and the time to check that an already-built image exists.

Both builds start from the same base image with the same extra CA certificates and install
the same packages, with no layer cache and no package cache (downloads included). The
figure is recipe time / pip time (target <= 0.7x). Then the existence check (one HEAD on
the registry's manifest) is timed 20 times (target < 100 ms).

Needs a Docker engine, the base image and a registry (dev/start-docker.sh,
dev/base-image.sh, dev/start-registry.sh).

    .venv/bin/python dev/bench/build_bench.py [--packages "pandas==2.2.* scikit-learn==1.5.*"]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from airflow_infra.config import InfraConfig  # noqa: E402
from airflow_infra.images.builders import docker_client  # noqa: E402
from airflow_infra.images.service import ensure_image, image_exists, plan_image  # noqa: E402
from airflow_infra.spec import Environment  # noqa: E402

PIP_DOCKERFILE = """FROM {base}
COPY extra-ca.crt /usr/local/share/ca-certificates/extra.crt
RUN update-ca-certificates >/dev/null 2>&1
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /requirements.txt
RUN python3 -m venv /venv && /venv/bin/pip install --quiet --no-cache-dir -r /requirements.txt
"""


def build_pip(base: str, requirements: str, certificates: bytes, tag: str) -> float:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {
            "Dockerfile": PIP_DOCKERFILE.format(base=base).encode(),
            "requirements.txt": requirements.encode(),
            "extra-ca.crt": certificates,
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    started = time.perf_counter()
    for chunk in docker_client().api.build(
        fileobj=buffer, custom_context=True, tag=tag, network_mode="host", nocache=True, rm=True, decode=True
    ):
        if "error" in chunk:
            sys.exit(f"pip build failed: {chunk['error']}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", default="pandas==2.2.* scikit-learn==1.5.* requests")
    parser.add_argument("--registry", default=f"127.0.0.1:5000/bench{os.getpid()}")
    args = parser.parse_args()
    packages = args.packages.split()
    certs = [os.environ["SSL_CERT_FILE"]] if os.environ.get("SSL_CERT_FILE") else []
    config = InfraConfig(registry=args.registry, ca_certificates=certs)
    plan = plan_image(Environment(packages=packages), None, config)
    client = docker_client()

    # Ours, cold: no image in the registry, and no cached layers from an earlier build.
    for image in client.images.list(filters={"label": f"org.airflow-infra.content-hash={plan.recipe.content_hash}"}):
        client.images.remove(image.id, force=True)
    client.api.prune_builds() if hasattr(client.api, "prune_builds") else None
    started = time.perf_counter()
    ensure_image(plan, config, lambda line: None)
    ours = time.perf_counter() - started

    pip = build_pip(config.base_image, "\n".join(packages) + "\n", plan.recipe.ca_certificates, f"bench-pip:{os.getpid()}")
    client.images.remove(f"bench-pip:{os.getpid()}", force=True)

    checks = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert image_exists(plan.reference, config)
        checks.append(time.perf_counter() - t0)

    print(f"packages: {' '.join(packages)}; base {config.base_image}; cold (no layer or package cache)")
    print(f"  project recipe (uv), build + push: {ours:6.1f} s")
    print(f"  plain pip Dockerfile, build only:   {pip:6.1f} s")
    print(f"RATIO recipe/pip build time = {ours / pip:.2f}x (target <= 0.7x)")
    print(f"existence check of a built image: median {statistics.median(checks) * 1000:.1f} ms, max {max(checks) * 1000:.1f} ms (target < 100 ms)")


if __name__ == "__main__":
    main()
