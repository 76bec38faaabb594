"""The `docker` kind: the task's built image on the worker's Docker engine."""

from __future__ import annotations

from typing import Literal

from airflow_infra.targets.contract import TargetConfig, TargetKind


class DockerTarget(TargetConfig):
    kind: Literal["docker"]


KIND = TargetKind(name="docker", schema=DockerTarget, runner="airflow_infra.targets.docker.runner:DockerRunner", needs_image=True)
