"""What every backend receives and must do."""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import Logger
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from airflow_infra.spec import Environment, Resources

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_infra.artifacts import ArtifactStore


@dataclass
class Job:
    """One call to run: its declaration and where its call and outputs live in the store."""

    dag_id: str
    task_id: str
    environment: Environment
    resources: Resources
    store: ArtifactStore
    task_dir: ObjectStoragePath
    refs: list[str]
    log: Logger
    requirements_path: Path | None = None
    requirements_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        from airflow_infra.errors import where

        return where(self.dag_id, self.task_id)


class Backend(Protocol):
    def run(self, job: Job) -> None:
        """Run the call in job.task_dir; on return, outcome.json is in the store (or it raises)."""

    def kill(self) -> None:
        """Stop a running call (Airflow's on_kill)."""
