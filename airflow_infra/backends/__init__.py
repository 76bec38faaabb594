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
    if kind == "kubernetes":
        from airflow_infra.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(target_name, target, config)
    if kind == "batch":
        from airflow_infra.backends.batch import BatchBackend

        return BatchBackend(target_name, target, config)
    raise InfraConfigError(f"target {target_name!r} is of unknown kind {kind!r}")


__all__ = ["Backend", "Job", "backend_for"]
