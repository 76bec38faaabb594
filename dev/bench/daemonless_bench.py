"""Benchmark: the daemonless builder against the docker builder, build + push, per package set.

For each set (numpy+pandas, and a data-science set of about 28 distributions):
- cold: nothing cached (docker: no image of the recipe, no build cache, so uv downloads
  everything inside the build; daemonless: an empty uv cache and an empty layer cache), into
  an empty registry namespace (both mount or find the base's layers there); the modules
  either builder imports (docker's client, Airflow's configuration) are loaded beforehand,
  as on a worker;
- warm: daemonless with its layer cache into another empty namespace (time to assemble
  the image, then the upload), docker with its build cache;
- one package added to the set: time and bytes pushed by each;
- the bytes a node holding the set's image pulls for the set + one package (layers from the
  first one that differs: an engine reuses a layer only under the same parent chain).

Targets: cold <= 0.6x docker; one package <= 3 s and <= 1% of docker's bytes; warm
assembly <= 1 s plus upload. Needs the engine, the registry and the base image pushed to
it (dev/start-docker.sh, dev/start-registry.sh, dev/push-base-image.sh).

    .venv/bin/python dev/bench/daemonless_bench.py [--only small|ds] [--breakdown]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from airflow_infra.config import InfraConfig  # noqa: E402
from airflow_infra.images import builders  # noqa: E402
from airflow_infra.images.daemonless import builder as daemonless  # noqa: E402
from airflow_infra.images.daemonless.registry_push import RegistryClient  # noqa: E402
from airflow_infra.images.daemonless.timing import Stopwatch  # noqa: E402
from airflow_infra.images.service import ensure_image, plan_image  # noqa: E402
from airflow_infra.spec import Environment  # noqa: E402

BASE = "127.0.0.1:5000/airflow-infra/base:bookworm"
SETS = {
    "small": ["numpy", "pandas"],
    "ds": ["pandas", "scikit-learn", "pyarrow", "matplotlib", "boto3", "requests"],
}
ADDED = "tqdm==4.66.4"

uploaded: list[int] = []
_real_upload = RegistryClient.upload_blob


def counting_upload(client, repository, blob):
    _real_upload(client, repository, blob)
    uploaded.append(blob.size)


RegistryClient.upload_blob = counting_upload


def manifest(reference: str) -> dict:
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    return RegistryClient(host, None).manifest(repository, tag)[0]


def own_bytes(reference: str) -> int:
    """Compressed bytes of the image's layers above the base."""
    return sum(layer["size"] for layer in manifest(reference)["layers"][1:])


def new_bytes(reference: str, previous: str) -> int:
    before = {layer["digest"] for layer in manifest(previous)["layers"]}
    return sum(layer["size"] for layer in manifest(reference)["layers"] if layer["digest"] not in before)


def pull_bytes(reference: str, sibling: str) -> int:
    """What a node holding `sibling` downloads for `reference`: every layer from the first that differs."""
    mine, theirs = manifest(reference)["layers"], manifest(sibling)["layers"]
    shared = 0
    while shared < min(len(mine), len(theirs)) and mine[shared]["digest"] == theirs[shared]["digest"]:
        shared += 1
    return sum(layer["size"] for layer in mine[shared:])


def timed_build(config: InfraConfig, packages: list[str]) -> tuple[float, str]:
    plan = plan_image(Environment(packages=packages), None, config)
    started = time.perf_counter()
    logs.clear()
    assert ensure_image(plan, config, lambda line: logs.append((time.perf_counter() - started, line)))
    return time.perf_counter() - started, plan.reference


logs: list[tuple[float, str]] = []


def breakdown(builder: str) -> str:
    """The last build's phases: the daemonless builder logs them; docker's are build, then push."""
    if builder == "daemonless":
        return next(line.removeprefix("timings: ") for _, line in logs if line.startswith("timings: "))
    pushing = next(at for at, line in logs if line.startswith("push: "))
    return f"build (download, install, commit) {pushing:.2f}s, push (compress, upload) {logs[-1][0] - pushing:.2f}s"


def run_set(name: str, packages: list[str], scratch: Path, show_breakdown: bool) -> None:
    ns = f"127.0.0.1:5000/bench-dl{os.getpid()}-{name}"
    certs = [os.environ["SSL_CERT_FILE"]] if os.environ.get("SSL_CERT_FILE") else []
    docker_cfg = InfraConfig(registry=f"{ns}-docker", builder="docker", base_image=BASE, ca_certificates=certs)
    dl_cfg = InfraConfig(registry=f"{ns}-daemonless", builder="daemonless", base_image=BASE, ca_certificates=certs)
    client = builders.docker_client()
    # What a worker has loaded before it builds (the daemonless builder reads Airflow's
    # configuration: a first import costs seconds), so that neither timing includes it.
    builders.get_builder("daemonless")
    # Docker, cold: no image of this recipe, no build cache.
    plan = plan_image(Environment(packages=packages), None, docker_cfg)
    for image in client.images.list(filters={"label": f"org.airflow-infra.content-hash={plan.recipe.content_hash}"}):
        client.images.remove(image.id, force=True)
    client.api.prune_builds()
    docker_cold, docker_ref = timed_build(docker_cfg, packages)
    docker_cold_phases = breakdown("docker")
    docker_bytes = own_bytes(docker_ref)
    docker_plus, docker_plus_ref = timed_build(docker_cfg, [*packages, ADDED])
    docker_plus_bytes = new_bytes(docker_plus_ref, docker_ref)
    docker_warm, _ = timed_build(docker_cfg.model_copy(update={"registry": f"{ns}-docker-warm"}), packages)

    # Daemonless, cold: empty uv cache and layer cache.
    os.environ["UV_CACHE_DIR"] = str(scratch / f"uv-{name}")
    os.environ["AIRFLOW__INFRA__LAYER_CACHE_DIR"] = str(scratch / f"layers-{name}")
    uploaded.clear()
    dl_cold, dl_ref = timed_build(dl_cfg, packages)
    dl_cold_phases = breakdown("daemonless")
    dl_cold_up = sum(uploaded)
    uploaded.clear()
    dl_plus, dl_plus_ref = timed_build(dl_cfg, [*packages, ADDED])
    dl_plus_up = sum(uploaded)
    # Warm: everything cached on disk, an empty namespace; assembly timed on its own too.
    recipe = plan_image(Environment(packages=packages), None, dl_cfg).recipe
    started = time.perf_counter()
    daemonless.DaemonlessBuilder().layers(recipe, daemonless.MAX_LAYERS - 1, lambda line: None, Stopwatch())
    dl_assembly = time.perf_counter() - started
    uploaded.clear()
    dl_warm, _ = timed_build(dl_cfg.model_copy(update={"registry": f"{ns}-daemonless-warm"}), packages)
    dl_warm_up = sum(uploaded)

    mb = 2**20
    layers = len(manifest(dl_ref)["layers"])
    print(f"\n== {name}: {' '.join(packages)} -> {layers - 3} distributions, {layers} layers (base 1)")
    print(f"  same tag from both builders: {docker_ref.rsplit(':', 1)[1] == dl_ref.rsplit(':', 1)[1]}")
    print(f"  cold build+push     docker {docker_cold:6.1f} s   daemonless {dl_cold:6.1f} s   "
          f"RATIO {dl_cold / docker_cold:.2f}x (target <= 0.6x); pushed docker {docker_bytes / mb:.1f} MiB, "
          f"daemonless {dl_cold_up / mb:.1f} MiB")
    if show_breakdown:
        print(f"    docker cold:     {docker_cold_phases}")
        print(f"    daemonless cold: {dl_cold_phases}")
    print(f"  +{ADDED:<17} docker {docker_plus:6.1f} s   daemonless {dl_plus:6.1f} s (target <= 3 s); "
          f"pushed docker {docker_plus_bytes / mb:.2f} MiB, daemonless {dl_plus_up / mb:.3f} MiB = "
          f"{100 * dl_plus_up / docker_plus_bytes:.2f}% of docker's (target <= 1%)")
    print(f"  warm build+push     docker {docker_warm:6.1f} s   daemonless {dl_warm:6.1f} s "
          f"(assembly from cached layers {dl_assembly:.2f} s, target <= 1 s; then {dl_warm_up / mb:.1f} MiB uploaded)")
    print(f"  pull on a node holding the set's image, for set+{ADDED}: docker {pull_bytes(docker_plus_ref, docker_ref) / mb:.2f} MiB, "
          f"daemonless {pull_bytes(dl_plus_ref, dl_ref) / mb:.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(SETS))
    parser.add_argument("--breakdown", action="store_true", help="where each cold build's time went")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daemonless-bench-") as scratch:
        for name, packages in SETS.items():
            if args.only in (None, name):
                run_set(name, packages, Path(scratch), args.breakdown)


if __name__ == "__main__":
    main()
