"""What every backend receives and must do."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    context: Any = None  # Airflow's task context, for backends that delegate to an operator

    @property
    def where(self) -> str:
        from airflow_infra.errors import where

        return where(self.dag_id, self.task_id)


class Backend(Protocol):
    def run(self, job: Job) -> None:
        """Run the call in job.task_dir; on return, outcome.json is in the store (or it raises)."""

    def kill(self) -> None:
        """Stop a running call (Airflow's on_kill)."""

    def resume(self, job: Job, event: dict[str, Any] | None) -> None:
        """Finish a call this backend deferred; on return, outcome.json is in the store (or it raises)."""


def job_image(job: Job, config: Any) -> str:
    """The image reference for the job's environment, built (and pushed) first if missing;
    recorded as the task instance's Image link."""
    from airflow_infra.errors import InfraEnvironmentError
    from airflow_infra.images.service import ensure_image, plan_image
    from airflow_infra.links import image_url, publish

    plan = plan_image(job.environment, job.requirements_text, config)
    try:
        built = ensure_image(plan, config, lambda line: job.log.info("[build] %s", line))
    except InfraEnvironmentError as exc:
        raise InfraEnvironmentError(f"{job.where}: {exc}") from None
    job.log.info("image %s (%s)", plan.reference, "built now" if built else "present")
    publish(job.context, "image", image_url(plan.reference, config.image_url))
    return plan.reference


def execute_delegate(operator: Any, context: Any) -> Any:
    """Run a provider operator's execute inside ours (composition), as the task runner would:
    with its sentinel, so Airflow does not warn about an operator called outside the runner."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    return operator.execute(context, **{f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value})


@contextmanager
def deadline(seconds: float | None, on_expiry: Callable[[], None]) -> Iterator[None]:
    """Call on_expiry (from a timer thread) if the block is still running after `seconds`."""
    timer = threading.Timer(seconds, on_expiry) if seconds else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()


def describe_exit(code: int) -> str:
    import signal

    if code < 0 or code == 137:
        signum = -code if code < 0 else code - 128
        hint = ": most likely out of memory (the kernel's OOM killer), raise `memory`" if signum == signal.SIGKILL else ""
        return f"killed by {signal.Signals(signum).name}{hint}"
    return f"exit code {code}"


def check_exit(job: Job, code: int, elapsed: float, out: Path, *, oom_limit: int | None = None) -> None:
    """Turn how the call's process ended into the error a user can act on (or nothing, if it wrote its outcome)."""
    from airflow_infra import runtime
    from airflow_infra.errors import InfraTaskFailed
    from airflow_infra.quantities import format_bytes

    timeout = job.resources.timeout
    if timeout and elapsed >= timeout and code != 0:
        raise InfraTaskFailed(
            f"{job.where}: timed out after {elapsed:.0f}s (timeout={timeout:g}s); raise `timeout` or make the task faster"
        )
    if oom_limit is not None:
        raise InfraTaskFailed(
            f"{job.where}: out of memory: the task hit its memory limit of {format_bytes(oom_limit)} and was killed "
            "(exit 137); raise `memory`"
        )
    if code not in (0, runtime.EXIT_USER_ERROR) and not (out / runtime.OUTCOME_FILE).exists():
        raise InfraTaskFailed(f"{job.where}: the task process died ({describe_exit(code)}) before writing a result")
