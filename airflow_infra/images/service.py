"""One place that answers "which image does this environment run in, and is it there?"."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from airflow_infra.config import InfraConfig
from airflow_infra.images.builders import docker_client, get_builder
from airflow_infra.images.recipe import ImageRecipe, make_recipe
from airflow_infra.images.registry import ImageRef, credentials, manifest_exists
from airflow_infra.spec import Environment


@dataclass(frozen=True)
class ImagePlan:
    recipe: ImageRecipe
    reference: str


def plan_image(environment: Environment, requirements_text: str | None, config: InfraConfig) -> ImagePlan:
    recipe = make_recipe(
        environment,
        requirements_text=requirements_text,
        base_image=config.base_image,
        ca_certificate_files=config.ca_certificates,
        extra_requirements=store_requirements(config),
    )
    return ImagePlan(recipe, recipe.reference(config.registry))


def store_requirements(config: InfraConfig) -> list[str]:
    """What the runtime needs in an image to read and write the configured store itself."""
    url = config.artifacts or ""
    if url.startswith(("s3://", "s3a://")):
        from importlib.metadata import version

        return [f"s3fs=={version('s3fs')}"]
    return []


def image_exists(reference: str, config: InfraConfig) -> bool:
    """With a registry: one HEAD on the manifest (no pull, no Docker). Without: the local engine's images."""
    if config.registry:
        ref = ImageRef.parse(reference)
        return manifest_exists(reference, credentials(ref.host, config.registry_conn_id))
    import docker.errors

    try:
        docker_client().images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_image(plan: ImagePlan, config: InfraConfig, log: Callable[[str], None]) -> bool:
    """Build (and push) the image unless it exists. Returns whether it was built now.

    Builders of one image on this machine take turns under a file lock, and each asks again
    once it holds it: two workers needing the same missing image build it once. Across
    machines the registry arbitrates: the tag is the content hash, so a second build pushes
    the same environment under the same tag, and nothing is left half-tagged."""
    if image_exists(plan.reference, config):
        return False
    with _build_lock(plan.recipe.tag):
        if image_exists(plan.reference, config):
            log(f"image {plan.reference} was built by another worker meanwhile")
            return False
        return _build(plan, config, log)


@contextmanager
def _build_lock(tag: str) -> Iterator[None]:
    import fcntl

    from airflow_infra.config import lock_dir

    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"image-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def _build(plan: ImagePlan, config: InfraConfig, log: Callable[[str], None]) -> bool:
    builder = get_builder(config.builder)
    started = time.monotonic()
    log(f"building {plan.reference} with the {config.builder!r} builder")
    creds = credentials(ImageRef.parse(plan.reference).host, config.registry_conn_id) if config.registry else None
    builder.publish(plan.recipe, plan.reference, log, registry=bool(config.registry), credentials=creds)
    log(f"image {plan.reference} ready in {time.monotonic() - started:.1f}s")
    return True
