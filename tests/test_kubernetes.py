"""The kubernetes target: pod specs checked against the Kubernetes schema, and the real
KubernetesPodOperator end to end against dev/fake_kube_api.py (a TEST DOUBLE that runs each
pod as a Docker container; it is not a Kubernetes), with artifacts on moto's S3."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import kubernetes_validate
import pytest
import requests

from airflow_infra.client import Client
from airflow_infra.config import InfraConfig
from airflow_infra.targets.contract import Call
from airflow_infra.targets.kubernetes import KubernetesTarget
from airflow_infra.targets.kubernetes.podspec import TASK_DIR_ANNOTATION, make_operator, operator_arguments
from airflow_infra.errors import InfraConfigError
from airflow_infra.spec import Environment, Resources
from tests.conftest import FAKE_KUBE_API
from tests.dagrun import check_remote_escalation

K8S_VERSION = "1.33"
FAKE_API = FAKE_KUBE_API


def pod_dict(resources: Resources, target: KubernetesTarget | None = None, task_id: str = "fit_model") -> dict:
    """The pod the real operator would create for a call (no cluster needed to build it)."""
    from kubernetes.client import ApiClient

    target = target or KubernetesTarget(kind="kubernetes")
    call = Call("recsys", task_id, "run", -1, 1, Environment(), resources, None, None, logging.getLogger("test"))
    args = operator_arguments(call, target, "127.0.0.1:5000/ml/env:abc", "s3://bucket/run/t/-1/1", {"A": "1"})
    pod = make_operator(call, args).build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


GPU_TARGET = KubernetesTarget.model_validate({
    "kind": "kubernetes",
    "namespace": "ml",
    "service_account": "runner",
    "image_pull_secrets": ["regcred"],
    "labels": {"team": "recsys"},
    "annotations": {"owner": "ml-platform"},
    "node_selector": {"pool": "batch"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "gpu_types": {"a100": {"node_selector": {"gpu": "a100"},
                           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
    "gpu_resource": "nvidia.com/gpu",
})

DECLARATIONS = {
    "nothing": (Resources(), None),
    "cpu and memory": (Resources(cpu="500m", memory="1Gi"), None),
    "gpu, shm, disk, timeout": (Resources(cpu=8, memory="60Gi", gpu=2, gpu_type="a100", shm="8Gi", disk="100Gi", timeout="2h"), GPU_TARGET),
    "cpu limits, root allowed": (
        Resources(cpu=2, memory="3000Mi"),
        KubernetesTarget(kind="kubernetes", cpu_limit="request", memory_limit="none", security_context={}),
    ),
}


@pytest.mark.parametrize("name", DECLARATIONS)
def test_pod_specs_pass_the_kubernetes_schema(name):
    resources, target = DECLARATIONS[name]
    pod = pod_dict(resources, target)
    # strict: unknown or misspelt fields fail too; raises ValidationError with the path of the problem.
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    container = pod["spec"]["containers"][0]
    assert len(pod["spec"]["containers"]) == 1  # no xcom sidecar: results go through the store
    assert container["args"] == ["s3://bucket/run/t/-1/1/call.pkl", "s3://bucket/run/t/-1/1"]
    assert pod["metadata"]["annotations"][TASK_DIR_ANNOTATION] == "s3://bucket/run/t/-1/1"


def test_resources_map_to_requests_limits_and_volumes():
    pod = pod_dict(DECLARATIONS["gpu, shm, disk, timeout"][0], GPU_TARGET)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "60Gi", "ephemeral-storage": "100Gi"},
        # memory limit = request, no CPU limit (the default policy); GPUs only as limits
        "limits": {"memory": "60Gi", "ephemeral-storage": "100Gi", "nvidia.com/gpu": "2"},
    }
    assert spec["activeDeadlineSeconds"] == 7200
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert spec["nodeSelector"] == {"pool": "batch", "gpu": "a100"}
    assert [t["key"] for t in spec["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
    assert spec["serviceAccountName"] == "runner" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["namespace"] == "ml" and pod["metadata"]["labels"]["team"] == "recsys"
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False}
    assert {"name": "A", "value": "1"} in container["env"]


def test_limit_policy_and_root_are_the_targets_choice():
    pod = pod_dict(*DECLARATIONS["cpu limits, root allowed"])
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "3000Mi"}, "limits": {"cpu": "2"}}
    assert not pod["spec"].get("securityContext") and not container.get("securityContext")


def test_pod_template_is_the_base_the_call_is_merged_onto(tmp_path):
    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: template\n  labels: {cost-center: ml}\n"
        "spec:\n  priorityClassName: batch-low\n  containers:\n  - name: base\n    image: placeholder\n"
        "    env: [{name: FROM_TEMPLATE, value: '1'}]\n"
    )
    target = KubernetesTarget(kind="kubernetes", pod_template_file=str(template))
    pod = pod_dict(Resources(memory="1Gi"), target)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["priorityClassName"] == "batch-low" and pod["metadata"]["labels"]["cost-center"] == "ml"
    assert container["image"] == "127.0.0.1:5000/ml/env:abc"  # the call's image wins
    assert {"name": "FROM_TEMPLATE", "value": "1"} in container["env"] and {"name": "A", "value": "1"} in container["env"]
    assert container["resources"]["limits"] == {"memory": "1Gi"}


def test_unknown_gpu_type_is_refused_naming_the_task():
    with pytest.raises(InfraConfigError, match=r"task 'fit_model'.*gpu_type='h100'.*\['a100'\]"):
        pod_dict(Resources(gpu=1, gpu_type="h100"), GPU_TARGET)


def test_bad_kubernetes_config_is_refused():
    with pytest.raises(ValueError, match="namespace"):
        InfraConfig.model_validate({"targets": {"k8s": {"kind": "kubernetes", "namespace": "ML_Team"}}})
    with pytest.raises(ValueError, match="memory_limit"):
        InfraConfig.model_validate({"targets": {"k8s": {"kind": "kubernetes", "memory_limit": "double"}}})


# End to end, against the test double.

def write_kube_yaml(docker_yaml, moto_s3: str, *, deferrable: bool = False, rules: str = "", extra: str = "") -> str:
    return docker_yaml(  # appended under `targets:`
        f"  k8s: {{kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, deferrable: {str(deferrable).lower()}, "
        "startup_timeout: 60, dashboard_url: 'https://dashboard.test/#/pod/{namespace}/{name}'}\n"
        # The same registry seen under an address nothing answers at: every pull fails.
        "  k8s-unreachable: {kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, pull_registry: '127.0.0.1:5999/gone'}\n"
        # Pods that cannot start fail after 5 s, not the default 120.
        f"  k8s-quick: {{kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, startup_timeout: 5, deferrable: {str(deferrable).lower()}}}\n"
        f"  k8s-nonroot: {{kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, startup_timeout: 5, deferrable: {str(deferrable).lower()}, "
        "security_context: {runAsNonRoot: true}}\n"
        # The production way to the store: the service account's role, no keys (pass_credentials off).
        "  k8s-irsa: {kind: kubernetes, namespace: ml, startup_check_interval: 1, service_account: s3-runner}\n"
        + extra
        + f"artifacts: {moto_s3}\n"
        + (rules or "rules:\n  - {when: \"memory >= 512Mi\", target: k8s}\n  - {target: local}\n")
    )


def pods_left() -> list[str]:
    listed = requests.get(f"{FAKE_API}/api/v1/namespaces/ml/pods", timeout=5).json()["items"]
    return [p["metadata"]["name"] for p in listed]


def pods_gone(prefix: str, within: float = 45) -> bool:
    """Whether no pod named prefix-* is listed, waiting out graceful deletion as on a cluster
    (a deleted pod stays listed through its grace period)."""
    deadline = time.monotonic() + within
    while [p for p in pods_left() if p.startswith(prefix)]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.integration
def test_seed_scenario_runs_pods_through_the_pod_operator(dags, docker_yaml, moto_s3, fake_kube, seed_data):
    registry = write_kube_yaml(docker_yaml, moto_s3)
    run = dags.test("recsys_seed", conf={"lr": 0.2})
    assert run.succeeded, run.output[-5000:]
    stored = Client(moto_s3).run("recsys_seed", run.run_id)
    assert {t: stored[t].target for t in ("load", "fit_a", "fit_b", "ensemble")} == {
        "load": "local", "fit_a": "k8s", "fit_b": "k8s", "ensemble": "local"
    }
    assert sorted(v.split(".")[0] for v in stored["ensemble"].result["numpy_versions"]) == ["1", "2"]
    assert stored["fit_b"].result["lr"] == 0.2
    assert "fit_b: gradient descent with numpy 2." in run.output  # the pod's log, through the operator
    assert "cannot be called outside of the Task Runner" not in run.output  # delegated as the runner would
    assert stored["fit_a"].metrics["peak_memory_bytes"] > 0  # measured inside the pod
    links = run.links("fit_a")  # extra links, as Airflow stored them when the task finished
    assert links["ImageLink"].startswith(f"http://{registry.replace('127.0.0.1:5000', '127.0.0.1:5000/v2')}/airflow-infra-env/manifests/")
    assert re.fullmatch(r"https://dashboard\.test/#/pod/ml/fit-a-[a-z0-9]+", links["PodLink"])
    assert "PodLink" not in run.links("load")  # ran locally
    assert pods_left() == []  # each pod deleted when done


@pytest.mark.integration
def test_mapped_tasks_run_one_pod_per_map_index(dags, docker_yaml, moto_s3, fake_kube):
    write_kube_yaml(docker_yaml, moto_s3, rules="rules:\n  - {target: k8s}\n")
    run = dags.test("fanout_example", conf={"n_shards": 3})
    assert run.succeeded, run.output[-5000:]
    stored = Client(moto_s3).run("fanout_example", run.run_id)
    assert stored["count_words"].map_indexes == [0, 1, 2]
    assert {stored["count_words"][i].target for i in range(3)} == {"k8s"}
    assert stored["merge"].target == "k8s" and stored["merge"].result  # read the mapped references from S3
    assert len({run.links("count_words", i)["PodLink"] for i in range(3)}) == 3
    assert pods_left() == []


@pytest.mark.integration
def test_failed_pods_are_explained(dags, docker_yaml, moto_s3, fake_kube):
    write_kube_yaml(docker_yaml, moto_s3)
    run = dags.test("infra_kube_failures")
    assert not run.succeeded
    out = run.output
    assert "task 'raises': the function raised ValueError: bad input on kubernetes" in out
    assert "task 'oom': out of memory: the task hit its memory limit of 64Mi and was killed (pod " in out
    assert "terminated reason is OOMKilled); raise `memory`" in out
    assert "task 'overruns': deadline exceeded" in out and "timeout=3s" in out
    assert "task 'unpullable': image pull failed" in out and "127.0.0.1:5999/gone/" in out
    assert "sleeping past the deadline" in out  # logs streamed before the pod was stopped
    assert pods_left() == []


@pytest.mark.integration
def test_deferrable_mode_resumes_from_the_store(dags, docker_yaml, moto_s3, fake_kube):
    write_kube_yaml(docker_yaml, moto_s3, deferrable=True, rules="rules:\n  - {target: k8s}\n")
    run = dags.test("infra_kube_failures")
    out = run.output
    assert "KubernetesPodTrigger" in out or "defer" in out.lower()
    assert "task 'raises': the function raised ValueError: bad input on kubernetes" in out
    assert "task 'oom': out of memory: the task hit its memory limit of 64Mi" in out


@pytest.mark.integration
def test_an_oom_killed_pod_is_retried_in_a_pod_with_double_the_memory(dags, docker_yaml, moto_s3, fake_kube):
    write_kube_yaml(docker_yaml, moto_s3, rules="rules:\n  - {target: k8s}\noom: {max_memory: 128Mi}\n")
    run = dags.test("infra_oom_remote")
    check_remote_escalation(run, moto_s3, "k8s", "its container's terminated reason is OOMKilled")
    assert pods_gone("grows")  # both tries' pods


@pytest.mark.integration
def test_killing_the_task_deletes_its_pod(airflow_db, docker_yaml, moto_s3, fake_kube):
    write_kube_yaml(docker_yaml, moto_s3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", "infra_kube_sleeper"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not [p for p in pods_left() if p.startswith("sleeps")]:
            assert proc.poll() is None and time.monotonic() < deadline, "no pod appeared"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # what a task process receives when the task is killed
        output, _ = proc.communicate(timeout=120)
        assert pods_gone("sleeps")
        assert "task 'sleeps': the task was killed; its pod was deleted" in output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.integration
def test_execution_timeout_deletes_the_pod(dags, docker_yaml, moto_s3, fake_kube):
    """Airflow's execution_timeout unwinds the task: its pod must not run on."""
    write_kube_yaml(docker_yaml, moto_s3)
    run = dags.test("infra_kube_timeout")
    assert not run.succeeded and "AirflowTaskTimeout" in run.output  # reported as the timeout it is
    assert "Deleting pod: overstays-" in run.output  # there was a pod when the timeout came
    assert pods_gone("overstays")  # deletion is graceful on a cluster


@pytest.mark.integration
def test_a_restarted_try_reattaches_to_its_running_pod(dags, docker_yaml, moto_s3, fake_kube, tmp_path):
    """The worker dies mid-task (SIGKILL: no on_kill); running the same try again finds the
    pod (through the task state store), follows it to the end and reads the results it wrote."""
    write_kube_yaml(docker_yaml, moto_s3)
    log = tmp_path / "first.log"
    before = set(pods_left())
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", "infra_kube_reattach"],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 300
        while not (pods := [p for p in set(pods_left()) - before if p.startswith("slow")]):
            assert proc.poll() is None and time.monotonic() < deadline, "no pod appeared"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_id = re.search(r"<TaskInstance: infra_kube_reattach\.slow (\S+) ", log.read_text()).group(1)
    again = subprocess.run(
        [sys.executable, "-m", "airflow", "tasks", "test", "infra_kube_reattach", "slow", run_id],
        capture_output=True, text=True, timeout=300,
    )
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    # Found through the task state store, where the killed attempt kept its call (pipeline.durable).
    reattached = f"try 1's call (kubernetes {pods[0]} on target 'k8s') still runs after its worker was lost: reattaching to it"
    assert reattached in out and "slow: done" in out, out[-4000:]
    task = Client(moto_s3).run("infra_kube_reattach", run_id)["slow"]
    assert [c.path.name for c in task.tries()] == ["1"]  # one attempt, no half-written second folder
    assert task.result == 42
    assert pods_left() == []


@pytest.mark.integration
@pytest.mark.parametrize("deferrable", [False, True], ids=["blocking", "deferrable"])
def test_pods_that_never_start_are_explained_from_the_cluster(dags, docker_yaml, moto_s3, fake_kube, deferrable):
    """Each reason comes from the pod and its events as they are when the task fails, not from
    the snapshot taken at create (then the pod was only Pending)."""
    write_kube_yaml(docker_yaml, moto_s3, deferrable=deferrable)
    run = dags.test("infra_kube_startup")
    out = run.output
    assert not run.succeeded
    assert re.search(r"task 'gpu_hungry': unschedulable: no node could take pod gpu-hungry-\S+ within 5s: "
                     r"0/3 nodes are available: 3 Insufficient nvidia\.com/gpu\.", out), out[-6000:]
    assert re.search(r"task 'rootless': container config error: pod rootless-\S+ could not start its container "
                     r"\(CreateContainerConfigError: container has runAsNonRoot and image will run as root", out), out[-6000:]
    assert "returned a failure" not in "".join(line for line in out.splitlines() if "task 'gpu_hungry':" in line)
    assert pods_gone("gpu-hungry") and pods_gone("rootless")


@pytest.mark.integration
def test_a_new_try_never_follows_a_pod_being_deleted(airflow_db, dags, docker_yaml, moto_s3, fake_kube, tmp_path):
    """A deleted pod stays listed (with a deletionTimestamp) through its grace period. The
    worker dies (SIGKILL), the pod is deleted, and a run of the task that comes at once starts a
    pod of its own and returns its own result: neither the pod operator's label search nor
    Airflow's task state store leads it to the dying pod."""
    write_kube_yaml(docker_yaml, moto_s3)
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", "infra_kube_stubborn"],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    pods = f"{FAKE_API}/api/v1/namespaces/ml/pods"
    try:
        deadline = time.monotonic() + 300
        while not (first := [p["metadata"]["name"] for p in requests.get(pods, timeout=5).json()["items"]
                             if p["metadata"]["name"].startswith("stubborn") and p["status"]["phase"] == "Running"]):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        time.sleep(4)  # the function has started: it ignores SIGTERM
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker dies: no on_kill
        proc.wait()
    requests.delete(f"{pods}/{first[0]}", json={"gracePeriodSeconds": 120}, timeout=5)  # as a person or controller would
    assert requests.get(f"{pods}/{first[0]}", timeout=5).json()["metadata"]["deletionTimestamp"]
    run_id = re.search(r"<TaskInstance: infra_kube_stubborn\.stubborn (\S+) ", log.read_text()).group(1)
    again = subprocess.Popen(
        # A short pod this time: were it to follow the old one, it would return the old token.
        [sys.executable, "-m", "airflow", "tasks", "test", "infra_kube_stubborn", "stubborn", run_id, "-t", '{"seconds": 1}'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # When the new run's pod appears, the old one must still be listed (being deleted).
        while not (listed := [p["metadata"]["name"] for p in requests.get(pods, timeout=5).json()["items"]
                              if p["metadata"]["name"].startswith("stubborn")]) or listed == [first[0]]:
            assert again.poll() is None and time.monotonic() < deadline, "no new pod appeared"
            time.sleep(0.2)
        still_dying = first[0] in listed
        output, _ = again.communicate(timeout=300)
    finally:
        requests.delete(f"{pods}/{first[0]}", json={"gracePeriodSeconds": 0}, timeout=5)
        if again.poll() is None:
            again.kill()
    out = output
    assert again.returncode == 0, out[-4000:]
    assert still_dying  # the new run ran while the old pod was listed
    assert "reattached to pod" not in out and f"Found matching pod {first[0]}" not in out, out[-6000:]
    token = re.search(r"stubborn: token (\w+)", out).group(1)  # printed by the new pod
    assert f"Returned value was: {token}" in out
    assert pods_gone("stubborn")


def _pod(phase: str, *, reason: str | None = None, message: str | None = None, waiting=None, terminated=None,
         conditions=None, deleting: bool = False, inits=(), others=()):
    """A pod as the API returns it; `inits` and `others`: (name, terminated state) of init
    containers and of containers beside base."""
    from kubernetes.client import models as k8s

    def status_of(name, waiting=None, terminated=None):
        return k8s.V1ContainerStatus(name=name, image="i", image_id="", ready=False, restart_count=0,
                                     state=k8s.V1ContainerState(waiting=waiting, terminated=terminated))

    status = k8s.V1PodStatus(phase=phase, reason=reason, message=message, conditions=conditions,
                             init_container_statuses=[status_of(n, terminated=t) for n, t in inits] or None,
                             container_statuses=[status_of("base", waiting, terminated),
                                                 *(status_of(n, terminated=t) for n, t in others)])
    meta = k8s.V1ObjectMeta(name="fit-1", deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None)
    return k8s.V1Pod(metadata=meta, status=status)


def _explain(pod, events=(), error_text="Pod fit-1 returned a failure.", memory_limit=64 << 20):
    from airflow_infra.targets.kubernetes.explain import explain_pod

    return explain_pod(pod, events, name="fit-1", error_text=error_text, memory_limit=memory_limit, timeout=3,
                       startup_timeout=5, reference="reg/x:1")


def test_exit_137_is_out_of_memory_only_when_the_kubelet_says_oomkilled():
    from kubernetes.client import models as k8s

    oom = k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    killed = k8s.V1ContainerStateTerminated(exit_code=137, reason="Error")
    assert _explain(_pod("Failed", terminated=oom)) == (
        "out of memory: the task hit its memory limit of 64Mi and was killed "
        "(pod fit-1: its container's terminated reason is OOMKilled); raise `memory`")
    assert _explain(_pod("Failed", terminated=oom), memory_limit=None).startswith(
        "out of memory: the task was killed with no memory limit of its own (pod fit-1")
    text = _explain(_pod("Failed", terminated=killed))
    assert "out of memory" not in text and "exit code 137, signal 9 (Error)" in text


def test_eviction_deletion_and_config_errors_are_named():
    from kubernetes.client import models as k8s

    evicted = _pod("Failed", reason="Evicted", message="Pod ephemeral local storage usage exceeds the total limit of containers 1Gi.")
    assert _explain(evicted).startswith("evicted: pod fit-1 was evicted by its node: Pod ephemeral local storage")
    assert "raise `disk`" in _explain(evicted)
    running = k8s.V1ContainerStateTerminated(exit_code=143, reason="Error")
    assert "was deleted while it ran" in _explain(_pod("Failed", terminated=running, deleting=True))
    config = k8s.V1ContainerStateWaiting(reason="CreateContainerConfigError", message='secret "db" not found')
    assert _explain(_pod("Pending", waiting=config)).startswith(
        'container config error: pod fit-1 could not start its container (CreateContainerConfigError: secret "db" not found)')


KUBELET_EVICTIONS = {  # the kubelet's own messages (pkg/kubelet/eviction), trailing space included
    "Pod ephemeral local storage usage exceeds the total limit of containers 64Mi. ": "than its `disk` limit allows",
    'Container base exceeded its local ephemeral storage limit "64Mi". ': "than its `disk` limit allows",
    'Usage of EmptyDir volume "scratch" exceeds the limit "1Gi". ': "emptyDir volume went over its sizeLimit",
    "The node was low on resource: ephemeral-storage. Container base was using 5Gi, which exceeds its request of 0. ":
        "its node ran short of local disk (ephemeral-storage): declare `disk`",
    "The node was low on resource: memory. Container base was using 3Gi, which exceeds its request of 1Gi. ":
        "its node ran short of memory",
}


@pytest.mark.parametrize("message", KUBELET_EVICTIONS)
def test_evictions_quote_the_kubelet_and_name_disk_when_it_was_the_cause(message):
    from kubernetes.client import models as k8s

    killed = k8s.V1ContainerStateTerminated(exit_code=137, reason="Error")  # as an eviction leaves it
    text = _explain(_pod("Failed", reason="Evicted", message=message, terminated=killed))
    assert text.startswith(f"evicted: pod fit-1 was evicted by its node: {message.strip()}"), text
    assert KUBELET_EVICTIONS[message] in text and "out of memory" not in text
    assert ("`disk`" in text) == ("ephemeral" in message)


def test_a_failed_init_container_or_sidecar_is_named():
    from kubernetes.client import models as k8s

    done = k8s.V1ContainerStateTerminated(exit_code=0, reason="Completed")
    failed = k8s.V1ContainerStateTerminated(exit_code=3, reason="Error")
    initializing = k8s.V1ContainerStateWaiting(reason="PodInitializing")
    text = _explain(_pod("Failed", waiting=initializing, inits=[("prepare", done), ("fetch", failed)]))
    assert text.startswith("init container fetch of pod fit-1 failed: exit code 3 (Error), so the pod's containers "
                           "never started (Init:Error)"), text
    oom = k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    assert "init container fetch of pod fit-1 failed: exit code 137 (out of memory)" in _explain(
        _pod("Failed", waiting=initializing, inits=[("fetch", oom)]))
    text = _explain(_pod("Failed", terminated=done, others=[("proxy", failed)]))
    assert text == "container proxy of pod fit-1 failed: exit code 3 (Error)", text
    text = _explain(_pod("Failed", terminated=done, others=[("proxy", oom)]))
    assert text.startswith("out of memory: container proxy of pod fit-1 was killed") and "pod template" in text


def test_startup_failures_quote_the_cluster():
    from kubernetes.client import models as k8s

    unschedulable = k8s.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                       message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    assert _explain(_pod("Pending", conditions=[unschedulable])).startswith(
        "unschedulable: no node could take pod fit-1 within 5s: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    backoff = k8s.V1ContainerStateWaiting(reason="ImagePullBackOff", message='Back-off pulling image "reg/x:1": not found')
    assert "image pull failed: the cluster could not pull reg/x:1 (ImagePullBackOff: Back-off pulling image" in _explain(
        _pod("Pending", waiting=backoff))
    creating = k8s.V1ContainerStateWaiting(reason="ContainerCreating")
    assert _explain(_pod("Pending", waiting=creating), error_text="Pod took too long to start. More than 5s.").startswith(
        "pod fit-1 did not start within 5s (its container was still ContainerCreating)")
    assert "the cluster no longer has it" in _explain(None)


@pytest.mark.integration
def test_a_pod_reaches_the_store_through_its_service_accounts_role(dags, docker_yaml, moto_s3, fake_kube):
    """No keys in the pod (pass_credentials is off, as in production): the double gives the
    service account's pods web identity credentials as EKS does, and boto in the pod exchanges
    them at STS; the pod reads its input and writes its result in the S3 store."""
    write_kube_yaml(docker_yaml, moto_s3)
    run = dags.test("infra_kube_irsa")
    assert run.succeeded, run.output[-5000:]
    result = Client(moto_s3).run("infra_kube_irsa", run.run_id)["total"].result
    assert result == {"total": 6, "role": "arn:aws:iam::123456789012:role/airflow-infra-s3-runner", "keys_given": []}
    assert pods_gone("total")


POD_TEMPLATES = {  # the target's pod template (a platform team's), each with one more container
    "init": "  initContainers:\n  - {name: fetch-weights, image: airflow-infra/base:bookworm, "
            "command: [sh, -c, 'echo fetching weights; exit 3']}\n",
    "sidecar": "  - {name: proxy, image: airflow-infra/base:bookworm, command: [sh, -c, 'echo proxy up; sleep 2; echo proxy done']}\n",
}


def pod_template_targets(tmp_path, deferrable: bool) -> str:
    """Targets whose pods come from a template with an init container (that fails) or a sidecar."""
    lines = ""
    for name, extra in POD_TEMPLATES.items():
        template = tmp_path / f"{name}.yaml"
        containers = "  containers:\n  - {name: base, image: placeholder}\n"
        template.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: template}\nspec:\n"
                            + (extra + containers if name == "init" else containers + extra))
        lines += (f"  k8s-{name}: {{kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, startup_timeout: 60, "
                  f"deferrable: {str(deferrable).lower()}, pod_template_file: '{template}'}}\n")
    return lines


@pytest.mark.integration
@pytest.mark.parametrize("deferrable", [False, True], ids=["blocking", "deferrable"])
def test_evictions_init_containers_and_sidecars_as_a_kubelet_ends_them(dags, docker_yaml, moto_s3, fake_kube, tmp_path, deferrable):
    """One DAG, three pods: local disk over `disk` (the kubelet evicts it; exit 137 that is not
    out of memory), a failing init container from the pod template (named, with its exit code),
    and a sidecar from the pod template that runs beside the call (the task succeeds)."""
    write_kube_yaml(docker_yaml, moto_s3, deferrable=deferrable, extra=pod_template_targets(tmp_path, deferrable))
    run = dags.test("infra_kube_containers")
    out = run.output
    assert not run.succeeded
    assert re.search(r"task 'fills_disk': evicted: pod fills-disk-\S+ was evicted by its node: Pod ephemeral local "
                     r"storage usage exceeds the total limit of containers 64Mi\.; it wrote more to its local disk "
                     r"\(ephemeral-storage\) than its `disk` limit allows", out), out[-6000:]
    assert re.search(r"task 'after_init': init container fetch-weights of pod after-init-\S+ failed: exit code 3 "
                     r"\(Error\)", out), out[-6000:]
    assert Client(moto_s3).run("infra_kube_containers", run.run_id)["beside_sidecar"].result == 7
    assert "out of memory" not in out
    assert pods_gone("fills-disk") and pods_gone("after-init") and pods_gone("beside-sidecar")


@pytest.mark.integration
def test_a_pod_deleted_while_its_containers_are_created_leaves_none_running(fake_kube, docker_infra):
    """Against the double alone (no Airflow): delete pods at moments around their containers'
    creation; none of their containers may run on, as on a cluster."""
    import docker

    pods = f"{FAKE_API}/api/v1/namespaces/ml/pods"
    image = "airflow-infra/base:bookworm"
    names = []
    for delay in (0.9, 1.2):
        name = f"deleted-early-{int(delay * 10)}"
        spec = {"containers": [{"name": n, "image": image, "command": ["sleep", "30"]} for n in ("base", "sidecar")],
                "securityContext": {"runAsUser": 1000}}
        assert requests.post(pods, json={"metadata": {"name": name}, "spec": spec}, timeout=5).status_code == 201
        while not requests.get(f"{pods}/{name}", timeout=5).json()["status"].get("containerStatuses"):
            time.sleep(0.05)  # scheduled: the containers are created about a second later
        time.sleep(delay)
        requests.delete(f"{pods}/{name}", json={"gracePeriodSeconds": 1}, timeout=5)
        names.append(name)
    assert all(pods_gone(name, within=15) for name in names)
    time.sleep(1)
    running = docker.from_env().containers.list(filters={"label": "airflow-infra.fake-kube"})
    assert not [c.name for c in running if c.labels["airflow-infra.fake-kube"] in {f"ml/{n}" for n in names}]
