"""The local target's runner: the call runs in its own process group, forked from a warm
runtime in a cached uv virtual environment (see server.py), inside a cgroup of its own that
holds its declared memory and cpu as limits where the worker may make one (cgroups.py)."""

from __future__ import annotations

import time
from pathlib import Path

from airflow_infra.targets.contract import Call, Deferral, Handle, Runner, deadline, explain_process_end
from airflow_infra.targets.local import cgroups
from airflow_infra.targets.local.server import RunningCall, ServerGone, forget, server_for
from airflow_infra.targets.local.venvs import child_environ, ensure_env
from airflow_infra.targets.output import log_line
from airflow_infra.targets.staging import StagedCall


class LocalRunner(Runner):
    kind = "local"
    delivers_connections = True  # in the request the warm server forks the call from (server.py)

    _python: Path
    _staged: StagedCall | None = None
    _running: RunningCall | None = None
    _cgroup: cgroups.CallCgroup | None = None

    def prepare(self, call: Call) -> None:
        from airflow_infra.config import env_cache_dir

        ignored = [f for f in ("apt_packages", "base_image") if getattr(call.environment, f)]
        if ignored:
            call.log.warning("%s: %s only apply to images; the local target ignores them", call.where, ", ".join(ignored))
        self._python, built = ensure_env(
            call.environment,
            env_cache_dir(),
            requirements_text=call.requirements_text,
            requirements_path=call.requirements_path,
            log=lambda line: call.log.info("[uv] %s", line),
        )
        call.log.info("environment %s (%s)", self._python.parent.parent.name, "built now" if built else "cached")

    def submit(self, call: Call) -> Handle:
        self._staged = StagedCall.open(call)
        handle = Handle(self.kind, self.name, "", call.folder_uri)
        self._cgroup = cgroups.for_call(
            self.target.cgroup_root, self.target.cgroup_parent, call.resources.memory, call.resources.cpu,
            lambda level, line: getattr(call.log, level)("%s", line),
        )
        try:
            server = server_for(self._python, child_environ({}))
            connections = call.connections.document() if call.connections else None
            self._running = server.start(
                self._staged.argv, self._staged.scratch, call.environment.env, connections,
                self._cgroup.join_files if self._cgroup else None,
            )
        except ServerGone as exc:
            forget(self._python)
            handle.details["server_died"] = str(exc)
            return handle
        except BaseException:
            self._release_cgroup(call)  # nothing runs in it: collect() is not reached from here
            raise
        handle.id = str(self._running.pid)
        self._started = time.monotonic()
        return handle

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        running = self._running
        if running is None:
            return None  # the server could not take the call: explained from the handle
        def expire() -> None:
            handle.details["timed_out"] = True
            running.kill()

        try:
            with deadline(call.resources.timeout, expire):
                handle.details["exit_code"] = code = running.stream(
                    lambda line: log_line(call.log, line), self._cgroup.kill_all if self._cgroup else None,
                )
            if self._cgroup is not None and (evidence := self._cgroup.oom_evidence(code)):
                handle.details.update(oom=True, oom_evidence=evidence)
        except ServerGone as exc:
            forget(self._python)
            handle.details["server_died"] = str(exc)
        except BaseException:
            # Airflow's execution_timeout or a signal unwinding the task: the call must not outlive it.
            running.kill()
            raise
        finally:
            handle.details["elapsed"] = time.monotonic() - self._started
        return None

    def collect(self, call: Call, handle: Handle) -> None:
        self._release_cgroup(call)
        if self._staged is not None:
            self._staged.close()
            self._staged = None

    def _release_cgroup(self, call: Call) -> None:
        if self._cgroup is not None:
            # Also ends what the call started outside its process group (setsid, daemons).
            for left in self._cgroup.remove():
                call.log.warning("the call's cgroup could not be removed: %s", left)
            self._cgroup = None

    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        if "server_died" in handle.details:
            return f"the task's runtime process died ({handle.details['server_died']}) before writing a result"
        return explain_process_end(call, handle)

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        if self._running is not None:
            self._running.kill()
        if self._cgroup is not None:
            self._cgroup.kill_all()
