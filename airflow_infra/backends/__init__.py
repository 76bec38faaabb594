"""Backends run one call on one kind of target. The operator picks one by the target's kind."""

from __future__ import annotations

from airflow_infra.backends.base import Backend, Job
from airflow_infra.errors import InfraConfigError


def backend_for(target_name: str, target, config) -> Backend:
    kind = target.kind
    if kind == "local":
        from airflow_infra.backends.local import LocalBackend

        return LocalBackend(target_name, target)
    if kind == "docker":
        from airflow_infra.backends.docker import DockerBackend

        return DockerBackend(target_name, target, config)
    if kind == "batch":
        from airflow_infra.backends.batch import BatchBackend

        return BatchBackend(target_name, target, config)
    raise InfraConfigError(
        f"target {target_name!r} is of kind {kind!r}, which this version of airflow-infra cannot run yet; "
        f"pin such tasks elsewhere or set AIRFLOW_INFRA_TARGET=local to run everything here"
    )


__all__ = ["Backend", "Job", "backend_for"]
