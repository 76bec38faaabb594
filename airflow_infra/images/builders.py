"""Builders make a recipe's image exist at a reference. Callers only use `get_builder(name)`.

One verb, `publish`: build and, with a registry, push (for `daemonless` building and
pushing are one step). `docker` builds on the local engine with the docker SDK (output
streamed into the log) and pushes with it; `daemonless` (images/daemonless/) assembles the
image on the host and pushes it over the registry's API, no engine needed; `none` builds
nothing, for deployments where CI builds images (`airflow-infra build`) and workers must
not. A new builder (an in-cluster one, say) is a class with `publish`, registered under
the entry point group `airflow_infra.builders`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Protocol

from airflow_infra.errors import InfraConfigError, InfraEnvironmentError
from airflow_infra.images.recipe import ImageRecipe
from airflow_infra.images.registry import Credentials

Log = Callable[[str], None]


class Builder(Protocol):
    def publish(self, recipe: ImageRecipe, reference: str, log: Log, *, registry: bool, credentials: Credentials | None) -> None:
        """Make the image exist at `reference`: in the registry it names when `registry`, else locally."""


def docker_client():
    import docker

    try:
        client = docker.from_env(version="auto", timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - every way of not reaching the engine is the same problem
        raise InfraEnvironmentError(f"no Docker engine answers ({exc}); start one (dev/start-docker.sh does)") from None
    return client


class DockerBuilder:
    def publish(self, recipe: ImageRecipe, reference: str, log: Log, *, registry: bool, credentials: Credentials | None) -> None:
        self._build(recipe, reference, log)
        if registry:
            self._push(reference, credentials, log)

    def _build(self, recipe: ImageRecipe, reference: str, log: Log) -> None:
        client = docker_client()
        lines: list[str] = []
        stream = client.api.build(
            fileobj=io.BytesIO(recipe.context_tar()),
            custom_context=True,
            tag=reference,
            network_mode="host",  # no bridge on these hosts; also what most CI runners allow
            rm=True,
            forcerm=True,
            decode=True,
            labels={"org.airflow-infra.content-hash": recipe.content_hash},
        )
        for chunk in stream:
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        lines.append(line)
                        log(line)
            if "error" in chunk:
                tail = "\n".join(lines[-15:])
                raise InfraEnvironmentError(f"building {reference} failed: {chunk['error'].strip()}\n{tail}")

    def _push(self, reference: str, credentials: Credentials | None, log: Log) -> None:
        repository, _, tag = reference.rpartition(":")
        auth = credentials.auth_config() if credentials else None
        last = ""
        for chunk in docker_client().api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk:
                raise InfraEnvironmentError(f"pushing {reference} failed: {chunk['error']}")
            status = chunk.get("status", "")
            if status and status != last and "progress" not in chunk:
                log(f"push: {status}")
                last = status


class NoBuilder:
    """`builder: none`: images must exist already."""

    def publish(self, recipe: ImageRecipe, reference: str, log: Log, *, registry: bool, credentials: Credentials | None) -> None:
        raise InfraEnvironmentError(
            f"image {reference} does not exist and builder is 'none'; build it first with "
            "`airflow-infra build DAG_FILE` (e.g. in CI), or set builder: docker (or daemonless) in infra.yaml"
        )


def _daemonless() -> Builder:
    from airflow_infra.images.daemonless.builder import DaemonlessBuilder

    return DaemonlessBuilder()


BUILDERS: dict[str, Callable[[], Builder]] = {"docker": DockerBuilder, "daemonless": _daemonless, "none": NoBuilder}


def builder_names() -> set[str]:
    """The built-in builders' names and those of installed plug-ins."""
    from importlib.metadata import entry_points

    return {*BUILDERS, *(entry.name for entry in entry_points(group="airflow_infra.builders"))}


def get_builder(name: str) -> Builder:
    if name in BUILDERS:
        return BUILDERS[name]()
    from importlib.metadata import entry_points

    for entry in entry_points(group="airflow_infra.builders"):
        if entry.name == name:
            return entry.load()()
    raise InfraConfigError(f"builder {name!r} is unknown; use one of {sorted(BUILDERS)} or install its plug-in")
