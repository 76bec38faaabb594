"""The local target: the call runs in its own process, in a cached uv virtual environment."""

from __future__ import annotations

import time
from pathlib import Path

from airflow_infra.backends.base import Job, check_exit, deadline
from airflow_infra.backends.runtime_server import RuntimeServer, ServerGone, forget, server_for
from airflow_infra.backends.staging import StagedCall, staged_call
from airflow_infra.config import LocalTarget, env_cache_dir
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.local_env import child_environ, ensure_env


class LocalBackend:
    def __init__(self, name: str, target: LocalTarget):
        self.name = name
        self.target = target
        self._server: RuntimeServer | None = None

    def run(self, job: Job) -> None:
        ignored = [f for f in ("apt_packages", "base_image") if getattr(job.environment, f)]
        if ignored:
            job.log.warning("%s: %s only apply to images; the local target ignores them", job.where, ", ".join(ignored))
        python, built = ensure_env(
            job.environment,
            env_cache_dir(),
            requirements_text=job.requirements_text,
            requirements_path=job.requirements_path,
            log=lambda line: job.log.info("[uv] %s", line),
        )
        job.log.info("environment %s (%s)", python.parent.parent.name, "built now" if built else "cached")
        with staged_call(job) as staged:
            self._execute(job, python, staged)

    def _execute(self, job: Job, python: Path, staged: StagedCall) -> None:
        self._server = server_for(python, child_environ({}))
        started = time.monotonic()
        try:
            with deadline(job.resources.timeout, self.kill):
                code = self._server.call(staged.argv, staged.scratch, job.environment.env, lambda line: job.log.info("%s", line))
        except ServerGone as exc:
            forget(python)
            raise InfraTaskFailed(f"{job.where}: the task's runtime process died ({exc}) before writing a result") from None
        finally:
            self._server = None
        check_exit(job, code, time.monotonic() - started, staged.out)

    def kill(self) -> None:
        server = self._server
        if server is not None:
            server.kill_call()
