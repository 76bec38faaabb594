"""The pod for a call: KubernetesPodOperator's arguments from the call's declaration and the
target's policy (requests/limits, placement, shared memory, deadline, security). No
cluster is needed to build them; the pod-spec tests validate them against the schema.
"""

from __future__ import annotations

import math
import re
from typing import Any

from airflow_infra.artifacts import CALL_FILE
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraConfigError
from airflow_infra.spec import Resources
from airflow_infra.targets.contract import Call
from airflow_infra.targets.kubernetes import KubernetesTarget

# The call folder a pod writes to: read back when an attempt reattaches to a pod an earlier
# attempt of the same try started.
TASK_DIR_ANNOTATION = "airflow-infra.io/task-dir"
SHM_VOLUME = "dshm"
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def _quantity_bytes(value: int) -> str:
    for suffix, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if value % (1 << shift) == 0:
            return f"{value >> shift}{suffix}"
    return str(value)


def _quantity_cpu(cores: float) -> str:
    return f"{cores:g}" if float(cores).is_integer() else f"{math.ceil(cores * 1000)}m"


def resource_requirements(resources: Resources, target: KubernetesTarget) -> dict[str, dict[str, str]]:
    """Requests and limits by the target's policy: GPUs only as limits, as Kubernetes wants."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = _quantity_cpu(resources.cpu)
        if target.cpu_limit == "request":
            limits["cpu"] = requests["cpu"]
    if resources.memory:
        requests["memory"] = _quantity_bytes(resources.memory)
        if target.memory_limit == "request":
            limits["memory"] = requests["memory"]
    if resources.disk:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = _quantity_bytes(resources.disk)
    if resources.gpu:
        limits[target.gpu_resource] = str(resources.gpu)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def placement(resources: Resources, target: KubernetesTarget, where: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Node selector and tolerations: the target's own, plus those of the task's gpu_type."""
    selector, tolerations = dict(target.node_selector), list(target.tolerations)
    if resources.gpu_type and target.gpu_types:
        gpu = target.gpu_types.get(resources.gpu_type)
        if gpu is None:
            raise InfraConfigError(
                f"{where}: gpu_type={resources.gpu_type!r} is not among this Kubernetes target's gpu_types "
                f"{sorted(target.gpu_types)}; use one of those or add it to infra.yaml"
            )
        selector.update(gpu.node_selector)
        tolerations.extend(gpu.tolerations)
    return selector, tolerations


def pull_reference(reference: str, config: InfraConfig, target: KubernetesTarget) -> str:
    """The reference the cluster pulls: the same repository and tag, from `pull_registry` if set."""
    if target.pull_registry and config.registry and reference.startswith(config.registry + "/"):
        return target.pull_registry + reference[len(config.registry) :]
    return reference


def pod_name(task_id: str) -> str:
    """A DNS-1123 name from the task id (the operator appends a random suffix)."""
    name = re.sub(r"[^a-z0-9-]+", "-", task_id.lower()).strip("-")
    return (name or "task")[:50].rstrip("-")


def operator_arguments(
    call: Call, target: KubernetesTarget, image: str, task_uri: str, env: dict[str, str]
) -> dict[str, Any]:
    """KubernetesPodOperator's arguments for one call (also what the pod-spec tests validate)."""
    from kubernetes.client import models as k8s

    res = call.resources
    selector, tolerations = placement(res, target, call.where)
    volumes, mounts = [], []
    if res.shm:
        # /dev/shm as a memory-backed emptyDir: the only way to size shared memory in a pod.
        volumes.append(k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=_quantity_bytes(res.shm))))
        mounts.append(k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"))
    security = dict(target.security_context)
    container_security = {"allowPrivilegeEscalation": False} if security.get("runAsNonRoot") else None
    requirements = resource_requirements(res, target)
    return {
        "name": pod_name(call.task_id),
        "namespace": target.namespace,
        "kubernetes_conn_id": target.kubernetes_conn_id,
        "image": image,
        "arguments": [f"{task_uri}/{CALL_FILE}", task_uri],  # the image's entrypoint is the runtime
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())],
        "container_resources": k8s.V1ResourceRequirements(**requirements) if requirements else None,
        "volumes": volumes,
        "volume_mounts": mounts,
        "labels": dict(target.labels),
        "annotations": {**target.annotations, TASK_DIR_ANNOTATION: task_uri},
        "node_selector": selector,
        "tolerations": tolerations,
        "service_account_name": target.service_account,
        "image_pull_secrets": [k8s.V1LocalObjectReference(name=s) for s in target.image_pull_secrets],
        "security_context": security or None,
        "container_security_context": container_security,
        "pod_template_file": target.pod_template_file,
        "active_deadline_seconds": math.ceil(res.timeout) if res.timeout else None,
        "startup_timeout_seconds": target.startup_timeout,
        "deferrable": target.deferrable,
        "get_logs": True,  # the pod's output streams into the task log
        "do_xcom_push": False,  # results travel through the artifact store
        "on_finish_action": "delete_pod",
        "log_events_on_failure": True,
    }


def make_operator(call: Call, arguments: dict[str, Any]) -> Any:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    return KubernetesPodOperator(task_id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{call.task_id}.pod")[:250], **arguments)
