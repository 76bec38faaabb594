"""The `local` kind: a subprocess on the worker, in a cached virtual environment built with uv."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from airflow_infra.targets.contract import TargetConfig, TargetKind

# A cgroup path: absolute, plain names (no `..`, no spaces or control characters).
_CGROUP_PATH = re.compile(r"/(?:[A-Za-z0-9_.:@+-]+/?)*\Z")


class LocalTarget(TargetConfig):
    kind: Literal["local"] = "local"
    # Where the cgroup filesystem is mounted (v2: the unified mount; v1: the folder holding
    # memory/ and cpu/). Each call gets a cgroup there with its declared memory and cpu as
    # limits; where none can be made, calls run unlimited and the task log says why.
    cgroup_root: str = "/sys/fs/cgroup"
    # The cgroup (a path inside the hierarchy, e.g. /airflow-calls) calls' cgroups are made
    # in; default: the worker's own, from /proc/self/cgroup.
    cgroup_parent: str | None = None
    # Items of a fan-out (pipeline/fanout.py) run at once, each in a process of its own;
    # default: the cores this worker may use. A task's `.fan_out(parallelism=)` overrides it.
    parallelism: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("cgroup_root", "cgroup_parent")
    @classmethod
    def _plain_path(cls, value: str | None) -> str | None:
        if value is not None and (not _CGROUP_PATH.match(value) or "/../" in f"{value}/" or "/./" in f"{value}/"):
            raise ValueError(f"expected an absolute path of plain names such as /sys/fs/cgroup, got {value!r}")
        return value


KIND = TargetKind(name="local", schema=LocalTarget, runner="airflow_infra.targets.local.runner:LocalRunner", needs_image=False)
