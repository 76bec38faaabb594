"""The `local` kind: a subprocess on the worker, in a cached virtual environment built with uv."""

from __future__ import annotations

from typing import Literal

from airflow_infra.targets.contract import TargetConfig, TargetKind


class LocalTarget(TargetConfig):
    kind: Literal["local"] = "local"


KIND = TargetKind(name="local", schema=LocalTarget, runner="airflow_infra.targets.local.runner:LocalRunner", needs_image=False)
