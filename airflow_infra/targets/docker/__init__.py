"""The `docker` kind: the task's built image on the worker's Docker engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from airflow_infra.targets.contract import TargetConfig, TargetKind


class DockerTarget(TargetConfig):
    kind: Literal["docker"]
    # Items of a fan-out (pipeline/fanout.py) run at once in the fan-out's container, each in
    # a process of its own; default: the cores this worker may use.
    parallelism: int | None = Field(default=None, ge=1, le=1024)


KIND = TargetKind(name="docker", schema=DockerTarget, runner="airflow_infra.targets.docker.runner:DockerRunner", needs_image=True)
