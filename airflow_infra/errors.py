"""The provider's exceptions. Each message names where the problem is and what would be valid."""

from __future__ import annotations


class InfraError(Exception):
    """Base class of every error airflow-infra raises on purpose."""


class InfraSpecError(InfraError, ValueError):
    """A task's declaration (environment, resources, target) is invalid."""


class InfraConfigError(InfraError, ValueError):
    """infra.yaml (or the [infra] Airflow config) is invalid."""


class InfraEnvironmentError(InfraError):
    """A task's environment could not be built."""


class InfraStoreError(InfraError):
    """The artifact store holds something that cannot be trusted: a location outside the store,
    a record that is not what this provider writes."""


class InfraTaskFailed(InfraError):
    """The user's function failed, or the process running it died."""


def where(dag_id: str | None, task_id: str | None) -> str:
    """The "DAG 'x', task 'y'" prefix every task-level message starts with."""
    return f"DAG {dag_id or '?'!r}, task {task_id or '?'!r}"
