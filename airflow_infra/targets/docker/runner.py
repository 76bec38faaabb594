"""The docker kind's runner: the call runs in its built image on the worker's Docker engine.

The same image a Kubernetes pod or a Batch job would run, with the declared cpu, memory
and shm as container limits, so a DAG can be tried locally exactly as production runs it.
The container's log stream carries only the call's output; its end (exit code, OOM) comes
from the engine's API.
"""

from __future__ import annotations

import os
import time
import uuid

from airflow_infra.targets.contract import Call, Deferral, Handle, Runner, deadline, explain_process_end
from airflow_infra.targets.image import prepare_image
from airflow_infra.targets.output import OutputLines, log_line
from airflow_infra.targets.staging import StagedCall


class DockerRunner(Runner):
    kind = "docker"

    _reference: str
    _staged: StagedCall | None = None
    _engine = None

    @property
    def engine(self):
        from airflow_infra.images.builders import docker_client

        if self._engine is None:
            self._engine = docker_client()
        return self._engine

    def prepare(self, call: Call) -> None:
        self._reference = prepare_image(call, self.config)

    def submit(self, call: Call) -> Handle:
        self._staged = staged = StagedCall.open(call)
        try:
            container = self._run_container(call, staged)
        except BaseException:
            staged.close()
            self._staged = None
            raise
        self._started = time.monotonic()
        return Handle(self.kind, self.name, container.id, call.folder_uri, {"container": container.name})

    def _run_container(self, call: Call, staged: StagedCall):
        resources = call.resources
        return self.engine.containers.run(
            self._reference,
            command=staged.argv,
            detach=True,
            name=f"airflow-infra-{uuid.uuid4().hex[:12]}",
            network_mode="host",
            # The call's folders and inputs at the same paths, written as the worker's own user.
            volumes={str(p): {"bind": str(p), "mode": mode} for p, mode in staged.mounts.items()},
            user=f"{os.getuid()}:{os.getgid()}",
            working_dir=str(staged.scratch),
            environment={**call.environment.env, "HOME": str(staged.scratch)},
            mem_limit=resources.memory,
            memswap_limit=resources.memory,  # no swap beyond the limit
            nano_cpus=int(resources.cpu * 1e9) if resources.cpu else None,
            shm_size=resources.shm,
            labels={"org.airflow-infra.dag": call.dag_id, "org.airflow-infra.task": call.task_id},
        )

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        container = self.engine.containers.get(handle.id)

        def expire() -> None:
            handle.details["timed_out"] = True
            self._stop(handle)

        try:
            with deadline(call.resources.timeout, expire):
                lines = OutputLines()
                seen = 0
                for chunk in container.logs(stream=True, follow=True):
                    seen += len(chunk)
                    for line in lines.feed(chunk):
                        log_line(call.log, line)
                handle.details["exit_code"] = container.wait()["StatusCode"]
                # A followed log can end before the engine has stored the last output (a
                # final line without a newline, seen here): the log read once the container
                # has stopped is complete, so pass on whatever the follow missed.
                skip = seen
                for chunk in container.logs(stream=True, follow=False):
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    for line in lines.feed(chunk[skip:]):
                        log_line(call.log, line)
                    skip = 0
                for line in lines.flush():
                    log_line(call.log, line)
            container.reload()
            handle.details["oom"] = bool(container.attrs["State"].get("OOMKilled", False))
        except BaseException:
            # Airflow's execution_timeout or a signal unwinding the task: the container must not outlive it.
            self._stop(handle)
            raise
        finally:
            handle.details["elapsed"] = time.monotonic() - self._started
        return None

    def collect(self, call: Call, handle: Handle) -> None:
        try:
            self._remove(handle)
        finally:
            if self._staged is not None:
                self._staged.close()
                self._staged = None

    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        if error is not None and "exit_code" not in handle.details:
            return f"the task's container {handle.details.get('container', handle.id)} failed: {error}"
        return explain_process_end(call, handle)

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        self._stop(handle)

    def _stop(self, handle: Handle) -> None:
        self._container_call(handle, "kill")

    def _remove(self, handle: Handle) -> None:
        self._container_call(handle, "remove", force=True)

    def _container_call(self, handle: Handle, method: str, **kwargs) -> None:
        import docker.errors

        try:
            getattr(self.engine.containers.get(handle.id), method)(**kwargs)
        except docker.errors.APIError:
            pass  # already stopped or gone
