"""The local target: the call runs in its own process, in a cached uv virtual environment."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from pathlib import Path

from airflow_infra import runtime
from airflow_infra.artifacts import CALL_FILE, OUTCOME_FILE
from airflow_infra.backends.base import Job
from airflow_infra.backends.runtime_server import RuntimeServer, ServerGone, forget, server_for
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
        with tempfile.TemporaryDirectory(prefix="airflow-infra-") as scratch:
            scratch_dir = Path(scratch)
            if job.store.is_local:
                task_dir = job.store.local_path(job.task_dir)
                self._execute(job, python, task_dir / CALL_FILE, task_dir, scratch_dir, refs_file=None)
            else:
                self._run_staged(job, python, scratch_dir)

    def _run_staged(self, job: Job, python: Path, scratch: Path) -> None:
        """A remote store: fetch the call and its inputs, run, then upload outputs (outcome last)."""
        call = job.store.download(job.task_dir / CALL_FILE, scratch / CALL_FILE)
        local_refs = {uri: str(job.store.download(job.store.path(uri), scratch / "refs" / f"{i}.pkl")) for i, uri in enumerate(job.refs)}
        refs_file = scratch / "refs.json"
        refs_file.write_text(json.dumps(local_refs))
        out = scratch / "out"
        self._execute(job, python, call, out, scratch, refs_file=refs_file)
        for path in sorted(out.iterdir(), key=lambda p: p.name == OUTCOME_FILE):
            if not path.name.startswith("."):
                job.store.upload(path, job.task_dir / path.name)

    def _execute(self, job: Job, python: Path, call: Path, out: Path, cwd: Path, refs_file: Path | None) -> None:
        argv = [str(call), str(out), *([str(refs_file)] if refs_file is not None else [])]
        timeout = job.resources.timeout
        self._server = server_for(python, child_environ({}))
        watchdog = threading.Timer(timeout, self.kill) if timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        started = time.monotonic()
        try:
            code = self._server.call(argv, cwd, job.environment.env, lambda line: job.log.info("%s", line))
        except ServerGone as exc:
            forget(python)
            raise InfraTaskFailed(f"{job.where}: the task's runtime process died ({exc}) before writing a result") from None
        finally:
            if watchdog:
                watchdog.cancel()
            self._server = None
        elapsed = time.monotonic() - started
        if timeout and elapsed >= timeout and code != 0:
            raise InfraTaskFailed(f"{job.where}: timed out after {elapsed:.0f}s (timeout={timeout:g}s); raise `timeout` or make the task faster")
        if code not in (0, runtime.EXIT_USER_ERROR) and not (out / OUTCOME_FILE).exists():
            raise InfraTaskFailed(f"{job.where}: the task process died ({_describe_exit(code)}) before writing a result")

    def kill(self) -> None:
        server = self._server
        if server is not None:
            server.kill_call()


def _describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = ": most likely out of memory (the kernel's OOM killer), raise `memory`" if code == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"
