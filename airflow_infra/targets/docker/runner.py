"""The docker kind's runner: the call runs in its built image on the worker's Docker engine.

The same image a Kubernetes pod or a Batch job would run, with the declared cpu, memory
and shm as container limits and `gpu` as a device request (`docker run --gpus N`), so a
DAG can be tried locally exactly as production runs it.
The container's log stream carries only the call's output; its end (exit code, OOM) comes
from the engine's API.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid

from airflow_infra import runtime
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.targets.contract import ENDED, GONE, RUNNING, Call, Deferral, Handle, Runner, deadline, explain_process_end
from airflow_infra.targets.image import prepare_image
from airflow_infra.targets.output import OutputLines, log_line
from airflow_infra.targets.staging import StagedCall, own_scratch


# Every container carries its call's identity, so that a later try (or a person with
# `docker ps --filter label=...`) finds what an earlier one left. `ti` is a digest of the task
# instance (dag, run, task, map index): an exact-match filter whatever the run id holds.
LABEL = "org.airflow-infra"
# Readable labels carry a value only when it is plainly printable (Airflow's default run ids
# and every dag/task id are): a label is shown in terminals and UIs, so no control characters.
_PLAIN_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.~:+@ -]{1,250}\Z")


def task_instance_key(call: Call) -> str:
    identity = json.dumps([call.dag_id, call.run_id, call.task_id, call.map_index])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def container_labels(call: Call) -> dict[str, str]:
    labels = {f"{LABEL}.ti": task_instance_key(call), f"{LABEL}.map-index": str(call.map_index), f"{LABEL}.try": str(call.try_number)}
    for name, value in (("dag", call.dag_id), ("task", call.task_id), ("run", call.run_id)):
        if _PLAIN_LABEL_VALUE.match(value):
            labels[f"{LABEL}.{name}"] = value
    return labels


def engine_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the engine did not answer (gone, restarting, socket removed), as
    opposed to an answer refusing something (docker's APIError)."""
    import docker.errors
    import requests
    import urllib3

    if isinstance(exc, docker.errors.APIError):
        return False
    return isinstance(exc, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError))


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


# What an engine that can hand GPUs to containers lists among its runtimes (the NVIDIA
# Container Toolkit registers it; `docker run --gpus` needs it).
GPU_RUNTIME = "nvidia"


def device_requests(gpu: int) -> list:
    """`gpu` as what `docker run --gpus N` asks the engine for: N devices with the gpu capability."""
    if not gpu:
        return []
    import docker.types

    return [docker.types.DeviceRequest(count=gpu, capabilities=[["gpu"]])]


def no_gpu_runtime(where: str, gpu: int, detail: str) -> str:
    return (
        f"{where}: gpu={gpu} cannot run on the docker target: the Docker engine at {engine_address()} has no GPU "
        f"runtime ({detail}); install the NVIDIA Container Toolkit on the engine's host, or route GPU tasks to a "
        "target that has GPUs (a rule such as `gpu > 0`)"
    )


def require_gpu_runtime(info: dict, where: str, gpu: int) -> None:
    """Refuse a GPU call on an engine whose `docker info` lists no GPU runtime."""
    runtimes = sorted(info.get("Runtimes") or {})
    if not any(GPU_RUNTIME in name for name in runtimes):
        raise InfraTaskFailed(no_gpu_runtime(where, gpu, f"its runtimes: {', '.join(runtimes) or 'none'}"))


class DockerRunner(Runner):
    kind = "docker"
    delivers_connections = True  # over the container's standard input (deliver_connections)
    fan_out = "pool"

    _reference: str
    _staged: StagedCall | None = None
    _engine = None
    _detached = False  # set by detach(): the worker is shutting down and leaves the container to the next try

    @property
    def engine(self):
        from airflow_infra.images.builders import docker_client

        if self._engine is None:
            self._engine = docker_client()
        return self._engine

    def prepare(self, call: Call) -> None:
        if call.resources.gpu:  # before any image is built for a call that cannot run here
            require_gpu_runtime(self.engine.info(), call.where, call.resources.gpu)
            if call.resources.gpu_type:
                call.log.warning("%s: gpu_type=%s is not applied on the docker target: the engine picks any %d GPU(s)",
                                 call.where, call.resources.gpu_type, call.resources.gpu)
        self._reference = prepare_image(call, self.config)

    def submit(self, call: Call) -> Handle:
        self._staged = staged = StagedCall.open(call)
        try:
            self._remove_earlier_containers(call)
            container = self._run_container(call, staged)
        except BaseException as exc:
            staged.close()
            self._staged = None
            if engine_unreachable(exc):
                raise InfraTaskFailed(
                    f"{call.where}: the Docker engine at {engine_address()} was lost while the task's container was "
                    f"being started ({type(exc).__name__}); start the engine again and retry the task"
                ) from None
            raise
        self._started = time.monotonic()
        # The scratch folder too: a later try on this machine collects a staged call's outputs from it.
        return Handle(self.kind, self.name, container.id, call.folder_uri, {"container": container.name, "scratch": str(staged.scratch)})

    def status(self, call: Call, handle: Handle) -> str:
        """RUNNING while the container is on this engine and what it writes can still be
        collected (on a local store, in place; on a remote one, from the scratch folder the
        dead worker staged on this machine), whether it still runs or has exited since:
        following an exited container reads its log and exit code at once."""
        import docker.errors

        try:
            container = self.engine.containers.get(handle.id)
        except docker.errors.NotFound:
            return GONE
        # The handle comes from the task state store, which Airflow's REST API can write: a
        # container of another task instance's is never followed, nor later removed.
        if container.labels.get(f"{LABEL}.ti") != task_instance_key(call):
            call.log.warning("container %s is not one of this task instance's: not followed", handle.id[:64])
            return GONE
        if not call.store.is_local and own_scratch(handle.details.get("scratch")) is None:
            return ENDED  # another machine's worker staged it: its outputs are out of reach here
        return RUNNING

    def reattach(self, call: Call, handle: Handle) -> None:
        scratch = own_scratch(handle.details.get("scratch"))
        self._staged = StagedCall.open(call) if call.store.is_local else StagedCall.reopen(call, scratch)
        self._started = time.monotonic()

    def _remove_earlier_containers(self, call: Call) -> None:
        """Remove what earlier tries (or attempts) of this task instance left on the engine:
        a container whose engine was lost mid-task, or whose worker died, is still listed
        once the engine is back (exited, or running with live-restore). A container a later
        try could follow was reattached to before this (pipeline.durable): what is left here
        cannot be, and two tries never run side by side."""
        filters = {"label": f"{LABEL}.ti={task_instance_key(call)}"}
        for container in self.engine.containers.list(all=True, filters=filters):
            call.log.warning(
                "removing container %s that try %s of this task left behind (%s)",
                container.name, container.labels.get(f"{LABEL}.try", "?"), container.status,
            )
            container.remove(force=True)

    def _run_container(self, call: Call, staged: StagedCall):
        import docker.errors

        connections = call.connections.document() if call.connections else None
        try:
            return self._start(call, staged, connections)
        except docker.errors.ImageNotFound:
            # Built elsewhere (daemonless, or another worker): pull it, as `docker run` would.
            self.engine.images.pull(self._reference)
            return self._start(call, staged, connections)

    def _start(self, call: Call, staged: StagedCall, connections: dict | None):
        resources = call.resources
        container = self.engine.containers.create(
            self._reference,
            command=staged.argv,
            # With connections: stdin open, and closed for the container once our one write
            # ends (docker-py sets StdinOnce only for a container created not detached).
            detach=connections is None,
            stdin_open=connections is not None,
            name=f"airflow-infra-{uuid.uuid4().hex[:12]}",
            network_mode="host",
            # The call's folders and inputs at the same paths, written as the worker's own user.
            volumes={str(p): {"bind": str(p), "mode": mode} for p, mode in staged.mounts.items()},
            user=f"{os.getuid()}:{os.getgid()}",
            working_dir=str(staged.scratch),
            environment={
                **call.environment.env,
                "HOME": str(staged.scratch),
                **({runtime.CONNECTIONS: "stdin"} if connections is not None else {}),  # where, never what
            },
            mem_limit=resources.memory,
            memswap_limit=resources.memory,  # no swap beyond the limit
            nano_cpus=int(resources.cpu * 1e9) if resources.cpu else None,
            shm_size=resources.shm,
            device_requests=device_requests(resources.gpu) or None,
            labels=container_labels(call),
        )
        try:
            if connections is None:
                container.start()
            else:
                deliver_connections(container, connections)
        except BaseException as exc:
            self._container_call(Handle(self.kind, self.name, container.id, call.folder_uri), "remove", force=True)
            if resources.gpu and "could not select device driver" in str(exc):  # the engine's own refusal
                raise InfraTaskFailed(no_gpu_runtime(call.where, resources.gpu, f"the engine answered: {exc}")) from None
            raise
        return container

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        try:
            return self._follow(call, handle)
        except Exception as exc:
            if engine_unreachable(exc):
                # Said once, by explain(): not the client library's traceback.
                handle.details["engine_lost"] = f"{engine_address()}: {type(exc).__name__}"
            raise

    def _follow(self, call: Call, handle: Handle) -> Deferral | None:
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
            if container.attrs["State"].get("OOMKilled", False):
                handle.details.update(oom=True, oom_evidence="the Docker engine reports State.OOMKilled")
            else:
                handle.details["oom"] = False
        except BaseException:
            # Airflow's execution_timeout or a signal unwinding the task: the container must not
            # outlive it, unless the worker is shutting down and left it to the next try (detach).
            if not self._detached:
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
        name = handle.details.get("container", handle.id)
        if "engine_lost" in handle.details:
            return (
                f"the Docker engine was lost while the task's container {name} ran ({handle.details['engine_lost']}); "
                "no result was written. The task's next try removes that container if the engine still has it "
                f"(or remove it: docker rm -f {name})"
            )
        if error is not None and "exit_code" not in handle.details:
            return f"the task's container {handle.details.get('container', handle.id)} failed: {error}"
        return explain_process_end(call, handle)

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        self._stop(handle)

    def detach(self, handle: Handle) -> bool:
        self._detached = True  # what unwinds the task now leaves the container running
        return True

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
        except Exception as exc:
            if not engine_unreachable(exc):
                raise
            # The engine is gone: nothing can be stopped or removed now. The failure is
            # explained once (explain); the next try removes the container.
            handle.details.setdefault("engine_lost", f"{engine_address()}: {type(exc).__name__}")


def deliver_connections(container, connections: dict) -> None:
    """Start the container and write the connections' values to its standard input, which
    the runtime reads to its end before it loads the call.

    Over stdin rather than anything else a container can be given: environment values and
    command arguments show in `docker inspect` (and in the engine's state on disk); a bind-
    mounted file would put them on the worker's disk; a tmpfs mount starts empty, and
    filling it needs an exec or an archive upload whose timing races the call. An attached
    stdin is a stream from this process to the call's, held by nobody else."""
    sock = container.attach_socket(params={"stdin": 1, "stream": 1})  # before start: nothing written is lost
    raw = getattr(sock, "_sock", sock)  # docker-py hands the attach stream as a SocketIO over the socket
    try:
        container.start()
        raw.sendall(json.dumps(connections).encode())
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        raw.close()
        sock.close()
