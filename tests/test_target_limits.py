"""Limits mean the same on every target: one out-of-memory sentence, said only on the
kernel's or the platform's word; `gpu` on the docker target as a device request, refused
where the engine has no GPU runtime. Unit tests of each kind's explain code with the facts
each platform really reports, plus the real Docker engine's answer (integration)."""

from __future__ import annotations

import logging

import pytest

from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.spec import Environment, Resources
from airflow_infra.targets.contract import Call, Handle, explain_process_end
from airflow_infra.targets.oom import OutOfMemory

SENTENCE = "out of memory: the task hit its memory limit of 64Mi and was killed ("


def a_call(**resources) -> Call:
    return Call(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=1, environment=Environment(),
                resources=Resources(**resources), store=None, folder=None, log=logging.getLogger("t"))


def process_end(facts: dict, **resources) -> str:
    return explain_process_end(a_call(**resources), Handle("k", "k", "1", "f", facts))


def test_local_and_docker_say_out_of_memory_only_on_the_kernels_or_engines_word():
    local = process_end({"exit_code": -9, "oom": True, "oom_evidence": "the kernel's OOM killer, cgroup v1 "
                         "memory.oom_control oom_kill=1"}, memory="64Mi")
    docker = process_end({"exit_code": 137, "oom": True, "oom_evidence": "the Docker engine reports State.OOMKilled"},
                         memory="64Mi")
    assert local.startswith(SENTENCE) and "oom_kill=1" in local and local.endswith("raise `memory`")
    assert docker.startswith(SENTENCE) and "State.OOMKilled" in docker
    # Marked as an out-of-memory kill, which is what escalation (on_oom) acts on, and nothing else is.
    assert isinstance(local, OutOfMemory) and isinstance(docker, OutOfMemory) and local.limit == 64 << 20
    # A SIGKILL or an exit 137 alone is a kill, not a guess at memory.
    for code in (-9, 137):
        text = process_end({"exit_code": code, "oom": False}, memory="64Mi")
        assert "out of memory" not in text and "SIGKILL" in text and not isinstance(text, OutOfMemory)


def test_kubernetes_says_it_the_same_way():
    from kubernetes.client import models as k8s

    from airflow_infra.targets.kubernetes.explain import explain_pod

    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled"))
    status = k8s.V1PodStatus(phase="Failed", container_statuses=[
        k8s.V1ContainerStatus(name="base", image="i", image_id="", ready=False, restart_count=0, state=state)])
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p-1"), status=status)
    text = explain_pod(pod, (), name="p-1", error_text="", memory_limit=64 << 20, timeout=None, startup_timeout=5,
                       reference="r")
    assert text.startswith(SENTENCE) and "OOMKilled" in text and isinstance(text, OutOfMemory)


def test_batch_says_it_the_same_way_only_when_batch_reports_out_of_memory():
    from airflow_infra.targets.batch.runner import explain_job, memory_mib

    # As DescribeJobs reports a container killed for memory.
    oom = {"jobId": "j-1", "status": "FAILED", "statusReason": "Essential container in task exited",
           "container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"},
           "attempts": [{"container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"}}]}
    text = explain_job(oom, memory_mib(Resources(memory="64Mi")) << 20)
    assert text.startswith(SENTENCE) and "Batch job j-1: OutOfMemoryError: Container killed due to memory usage" in text
    assert isinstance(text + "\nlast lines of its log:\n...", OutOfMemory)  # as BatchRunner.explain adds the log's tail
    # Undeclared memory: the 512 MiB the job was given.
    assert "memory limit of 512Mi" in explain_job(oom, memory_mib(Resources()) << 20)
    # Exit 137 with no such reason (a person terminated it, a spot reclaim): no guess.
    killed = {"jobId": "j-2", "status": "FAILED", "statusReason": "Terminated by user", "container": {"exitCode": 137}}
    text = explain_job(killed, 64 << 20)
    assert "out of memory" not in text and "exit code 137" in text and "Terminated by user" in text
    assert not isinstance(text, OutOfMemory)


def test_gpu_becomes_a_device_request_like_docker_run_gpus():
    from docker.types import DeviceRequest

    from airflow_infra.targets.docker.runner import device_requests

    assert device_requests(0) == []
    (request,) = device_requests(2)
    assert isinstance(request, DeviceRequest)
    assert dict(request) == {"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}


def test_gpu_is_refused_where_the_engine_lists_no_gpu_runtime():
    from airflow_infra.targets.docker.runner import require_gpu_runtime

    require_gpu_runtime({"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}, "DAG 'd', task 't'", 1)
    with pytest.raises(InfraTaskFailed, match=r"DAG 'd', task 't': gpu=2 cannot run on the docker target: .* no GPU "
                                              r"runtime \(its runtimes: io.containerd.runc.v2, runc\)"):
        require_gpu_runtime({"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}}, "DAG 'd', task 't'", 2)


@pytest.mark.integration
def test_this_engine_refuses_a_gpu_task_before_building_anything(tmp_path):
    """This machine's engine has no GPU: a gpu=1 call on the docker target fails in prepare
    (no image is built), naming DAG, task and field; and the engine's own answer to a device
    request is the one the runner turns into the same message."""
    import docker

    from airflow_infra.artifacts import ArtifactStore
    from airflow_infra.pipeline.execute import Execution
    from airflow_infra.pipeline.package import package_call
    from airflow_infra.pipeline.plan import plan_call
    from airflow_infra.targets.docker.runner import device_requests

    cfg = InfraConfig.model_validate({"targets": {"box": {"kind": "docker"}}})
    plan = plan_call({"gpu": 1, "packages": ["six"]}, "box", cfg, dag_id="d", task_id="t", dag_file=None)
    packaged = package_call(
        plan, lambda: 1, [], {}, store=ArtifactStore(f"file://{tmp_path}/store"), config=cfg, run_id="r", map_index=-1,
        try_number=1, multiple_outputs=False, dag_file=None, log=logging.getLogger("t"), context=None,
    )
    with pytest.raises(InfraTaskFailed, match=r"DAG 'd', task 't': gpu=1 cannot run on the docker target"):
        Execution(plan.runner(cfg), packaged.call).start()

    engine = docker.from_env()
    image = next(tag for i in engine.images.list() for tag in i.tags)
    container = engine.containers.create(image, command=["true"], device_requests=device_requests(1), network_mode="host")
    try:
        with pytest.raises(docker.errors.APIError, match="could not select device driver"):
            container.start()
    finally:
        container.remove(force=True)


def test_cgroup_hierarchies_are_found_from_mountinfo_and_proc_self_cgroup():
    """The local target's detection, on the texts a v2 host, a v1 host and a container with a
    bind-mounted sub-tree give (parsing only: the limits themselves run in test_local_limits)."""
    from pathlib import Path

    from airflow_infra.targets.local.cgroups import Unenforced, locate

    v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    found = locate(Path("/sys/fs/cgroup"), None, mountinfo=v2, proc_cgroup="0::/system.slice/airflow-worker.service\n")
    assert found.version == 2
    assert found.parents["memory"] == found.parents["cpu"] == Path("/sys/fs/cgroup/system.slice/airflow-worker.service")
    assert locate(Path("/sys/fs/cgroup"), "/airflow-calls", mountinfo=v2, proc_cgroup="0::/x\n").parents["memory"] == \
        Path("/sys/fs/cgroup/airflow-calls")
    v1 = ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
          "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
          "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    found = locate(Path("/sys/fs/cgroup"), None, mountinfo=v1, proc_cgroup="4:memory:/w/1\n1:cpu,cpuacct:/w/2\n0::/\n")
    assert found.version == 1
    assert found.parents == {"memory": Path("/sys/fs/cgroup/memory/w/1"), "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/w/2")}
    # A container that sees its own sub-tree mounted at the usual place (no cgroup namespace).
    bound = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    found = locate(Path("/sys/fs/cgroup"), None, mountinfo=bound, proc_cgroup="4:memory:/docker/abc\n")
    assert found.parents == {"memory": Path("/sys/fs/cgroup/memory")}
    with pytest.raises(Unenforced, match="no cgroup filesystem with the memory controller is mounted at /elsewhere"):
        locate(Path("/elsewhere"), None, mountinfo=v1, proc_cgroup="4:memory:/w\n")


def test_cgroup_paths_in_infra_yaml_are_validated():
    for bad in ("relative/path", "/sys/fs/cgroup/../etc", "/a b", "/x\n"):
        with pytest.raises(ValueError, match="absolute path of plain names"):
            InfraConfig.model_validate({"targets": {"local": {"kind": "local", "cgroup_parent": bad}}})
