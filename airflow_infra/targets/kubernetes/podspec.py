"""The pod for a call: KubernetesPodOperator's arguments from the call's declaration and the
target's policy (requests/limits, placement, shared memory, deadline, security). No
cluster is needed to build them; the pod-spec tests validate them against the schema.
"""

from __future__ import annotations

import functools
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
        "startup_check_interval_seconds": target.startup_check_interval,
        "deferrable": target.deferrable,
        # While deferred, come back for the log this often: not only once the pod has ended.
        "logging_interval": target.log_interval if target.deferrable else None,
        "get_logs": True,  # the pod's output streams into the task log
        "do_xcom_push": False,  # results travel through the artifact store
        "on_finish_action": "delete_pod",
        "log_events_on_failure": True,
    }


def make_operator(call: Call, arguments: dict[str, Any]) -> Any:
    return _observed_operator_class()(task_id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{call.task_id}.pod")[:250], **arguments)


@functools.cache
def _observed_operator_class() -> type:
    """KubernetesPodOperator, keeping the pod and its events as they are when it ends.

    The operator's cleanup deletes the pod and, on any failure, raises its generic "Pod ...
    returned a failure" in place of the launch error; its `remote_pod` is a snapshot from
    just after create. A failure is explained from what the cluster says at the end (a pull
    that failed seconds later, the scheduler's reason), so read the pod once more right
    before cleanup deletes it, in blocking and deferrable modes alike (both end there)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class ObservedPodOperator(KubernetesPodOperator):
        final_pod: Any = None
        final_events: tuple[Any, ...] = ()

        def cleanup(self, pod: Any, remote_pod: Any, xcom_result: Any = None, context: Any = None) -> None:
            if remote_pod and not self._killed:
                self.final_pod, self.final_events = _observe(self.pod_manager, pod or remote_pod)
            return super().cleanup(pod, remote_pod, xcom_result, context)

        def find_pod(self, namespace: str, context: Any, *, exclude_checked: bool = True) -> Any:
            # As the operator's own, but a pod being deleted (a killed try's, listed through
            # its grace period on a cluster) is never reattached to: a new try that found it
            # would follow a dying pod and read that try's folder.
            selector = self._build_find_pod_label_selector(context, exclude_checked=exclude_checked)
            pods = [p for p in self.client.list_namespaced_pod(namespace=namespace, label_selector=selector).items
                    if p.metadata.deletion_timestamp is None]
            if len(pods) > 1 and self.reattach_on_restart:
                from airflow.providers.cncf.kubernetes.operators.pod import FoundMoreThanOnePodFailure

                raise FoundMoreThanOnePodFailure(f"More than one pod running with labels {selector}")
            pod = self.process_duplicate_label_pods(pods) if len(pods) > 1 else (pods[0] if pods else None)
            if pod is not None:
                self.log_matching_pod(pod=pod, context=context)
            return pod

        def _get_pod_from_task_state_store(self, context: Any) -> Any:
            # Airflow 3.3's task state store names the pod an earlier attempt made: the same
            # rule, a pod being deleted is not reattached to (looked at before the operator
            # does, which would log that it reconnects).
            from airflow.providers.cncf.kubernetes.operators.pod import POD_IDENTIFIER_STATE_KEY

            store = context.get("task_state_store")
            stored = store.get(POD_IDENTIFIER_STATE_KEY) if store is not None else None
            if isinstance(stored, dict) and isinstance(stored.get("name"), str) and isinstance(stored.get("namespace"), str):
                try:
                    pod = self.hook.get_pod(stored["name"], stored["namespace"])
                except Exception:  # noqa: BLE001 - gone: the operator's own lookup says so
                    pod = None
                if pod is not None and pod.metadata.deletion_timestamp is not None:
                    self.log.info("pod %s is being deleted (an earlier attempt's): starting a new pod", pod.metadata.name)
                    return None
            return super()._get_pod_from_task_state_store(context)

    return ObservedPodOperator


def _observe(pod_manager: Any, pod: Any) -> tuple[Any, tuple[Any, ...]]:
    """The pod and its events as the API returns them now; (None, ()) where it cannot say."""
    try:
        current = pod_manager.read_pod(pod)
    except Exception:  # noqa: BLE001 - gone already, or the API is unreachable: explain from less
        return None, ()
    try:
        events = tuple(pod_manager.read_pod_events(pod).items or ())
    except Exception:  # noqa: BLE001
        events = ()
    return current, events
