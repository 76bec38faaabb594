"""The docker target: the call runs in its built image on the worker's Docker engine.

The same image a Kubernetes pod or a Batch job would run, with the declared cpu, memory
and shm as container limits, so a DAG can be tried locally exactly as production runs it.
"""

from __future__ import annotations

import os
import time
import uuid

from airflow_infra.backends.base import Job, check_exit, deadline, job_image
from airflow_infra.backends.staging import staged_call
from airflow_infra.config import DockerTarget, InfraConfig


class DockerBackend:
    def __init__(self, name: str, target: DockerTarget, config: InfraConfig):
        self.name, self.target, self.config = name, target, config
        self._container = None

    def run(self, job: Job) -> None:
        from airflow_infra.images.builders import docker_client

        reference = job_image(job, self.config)
        client = docker_client()
        resources = job.resources
        with staged_call(job) as staged:
            self._container = client.containers.run(
                reference,
                command=staged.argv,
                detach=True,
                name=f"airflow-infra-{uuid.uuid4().hex[:12]}",
                network_mode="host",
                # The call's folders at the same paths, written as the worker's own user.
                volumes={str(p): {"bind": str(p), "mode": "rw"} for p in staged.mounts},
                user=f"{os.getuid()}:{os.getgid()}",
                working_dir=str(staged.scratch),
                environment={**job.environment.env, "HOME": str(staged.scratch)},
                mem_limit=resources.memory,
                memswap_limit=resources.memory,  # no swap beyond the limit
                nano_cpus=int(resources.cpu * 1e9) if resources.cpu else None,
                shm_size=resources.shm,
                labels={"org.airflow-infra.dag": job.dag_id, "org.airflow-infra.task": job.task_id},
            )
            started = time.monotonic()
            try:
                with deadline(resources.timeout, self.kill):
                    pending = b""
                    for chunk in self._container.logs(stream=True, follow=True):
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            job.log.info("%s", line.decode(errors="replace"))
                    if pending:
                        job.log.info("%s", pending.decode(errors="replace"))
                    code = self._container.wait()["StatusCode"]
                self._container.reload()
                oom = self._container.attrs["State"].get("OOMKilled", False)
            finally:
                self._container.remove(force=True)
                self._container = None
            check_exit(job, code, time.monotonic() - started, staged.out, oom_limit=resources.memory if oom else None)

    def kill(self) -> None:
        container = self._container
        if container is not None:
            try:
                container.kill()
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
