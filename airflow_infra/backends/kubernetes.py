"""The kubernetes target: the call runs in a pod, through the cncf-kubernetes provider's
KubernetesPodOperator (composition: we configure and drive the real operator).

The pod gets two arguments, the call's and the task folder's URIs in the artifact store;
the runtime in the image reads its call and writes its outputs there itself. So no xcom
sidecar and no `pods/exec` permission are needed, and the pod spec never carries data.
"""

from __future__ import annotations

import math
import re
from typing import Any

from airflow.sdk.exceptions import TaskDeferred

from airflow_infra.artifacts import CALL_FILE, OUTCOME_FILE
from airflow_infra.backends.base import Job, execute_delegate, job_image
from airflow_infra.backends.remote import aws_environment, require_object_store, store_conn_id
from airflow_infra.config import InfraConfig, KubernetesTarget
from airflow_infra.errors import InfraConfigError, InfraTaskFailed
from airflow_infra.links import publish
from airflow_infra.quantities import format_bytes
from airflow_infra.spec import Resources

# The task folder a pod writes to: read back when a retry reattaches to a pod an earlier
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
    job: Job, target: KubernetesTarget, image: str, task_uri: str, env: dict[str, str]
) -> dict[str, Any]:
    """KubernetesPodOperator's arguments for one call (also what the pod-spec tests validate)."""
    from kubernetes.client import models as k8s

    res = job.resources
    selector, tolerations = placement(res, target, job.where)
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
        "name": pod_name(job.task_id),
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


def make_operator(job: Job, arguments: dict[str, Any]) -> Any:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    return KubernetesPodOperator(task_id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{job.task_id}.pod")[:250], **arguments)


class KubernetesBackend:
    def __init__(self, name: str, target: KubernetesTarget, config: InfraConfig):
        self.name, self.target, self.config = name, target, config
        self._operator_running = None
        self._reference = ""
        self._killed = False

    def _environment(self, job: Job) -> dict[str, str]:
        env = dict(job.environment.env)
        if job.store.url.startswith(("s3://", "s3a://")):  # the pod reads and writes the store with s3fs
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            hook = AwsBaseHook(aws_conn_id=store_conn_id(job.store.url) or "aws_default", client_type="s3")
            env.update(aws_environment(hook, pass_credentials=self.target.pass_credentials))
        return env

    def run(self, job: Job) -> None:
        require_object_store(job, self.name, "Kubernetes")
        self._reference = pull_reference(job_image(job, self.config), self.config, self.target)
        task_uri = job.store.uri(job.task_dir)
        operator = make_operator(job, operator_arguments(job, self.target, self._reference, task_uri,
                                                         self._environment(job)))
        self._operator_running = operator
        try:
            execute_delegate(operator, job.context)
        except TaskDeferred as deferred:
            self._settle(job, operator.pod)  # so the resumed call finds the pod's folder
            # The pod operator resumes in its own trigger_reentry; Airflow calls the method on
            # InfraOperator, whose execute_complete comes back to resume() below.
            raise TaskDeferred(
                trigger=deferred.trigger, method_name="execute_complete", kwargs=deferred.kwargs, timeout=deferred.timeout
            ) from None
        except Exception as exc:  # noqa: BLE001 - explained below, unless the call reported its own error
            self._fail(job, operator, exc)
            return
        finally:
            self._operator_running = None
        self._settle(job, operator.pod)

    def resume(self, job: Job, event: dict[str, Any] | None) -> None:
        operator = make_operator(job, operator_arguments(job, self.target, "pending", job.store.uri(job.task_dir), {}))
        try:
            operator.trigger_reentry(job.context, event or {})
        except Exception as exc:  # noqa: BLE001
            self._fail(job, operator, exc)
            return
        self._settle(job, operator.pod)

    def _settle(self, job: Job, pod: Any) -> None:
        """Link the task instance to its pod; if the operator reattached to a pod an earlier
        attempt of this try started, read that pod's outputs (its folder, in its annotation)."""
        metadata = getattr(pod, "metadata", None)
        if metadata is None:
            return
        if self.target.dashboard_url:
            publish(job.context, "pod", self.target.dashboard_url.format(namespace=metadata.namespace, name=metadata.name))
        used = (metadata.annotations or {}).get(TASK_DIR_ANNOTATION)
        if used and used != job.store.uri(job.task_dir):
            # Same try, same call: the folder this attempt prepared was never used.
            job.log.info("reattached to pod %s: its results are in %s", metadata.name, used)
            job.store.remove_tree(job.task_dir)
            job.task_dir = job.store.path(used)

    def _fail(self, job: Job, operator: Any, exc: Exception) -> None:
        pod = operator.remote_pod or operator.pod
        self._settle(job, pod)
        if job.store.exists(job.task_dir / OUTCOME_FILE):
            return  # the function failed and said why: InfraOperator reports that
        if self._killed:
            raise InfraTaskFailed(f"{job.where}: the task was killed; its pod was deleted") from None
        raise InfraTaskFailed(f"{job.where}: {self._explain(job, pod, exc)}") from None

    def _explain(self, job: Job, pod: Any, exc: Exception) -> str:
        """Say which way the pod failed and what to change, from its last status."""
        text = str(exc)
        status = getattr(pod, "status", None)
        name = getattr(getattr(pod, "metadata", None), "name", "?")
        states = [c.state for c in (getattr(status, "container_statuses", None) or []) if c.state]
        waiting = next((s.waiting for s in states if s.waiting and s.waiting.reason in PULL_FAILURES), None)
        if waiting is not None or "Image cannot be pulled" in text:
            detail = f"{waiting.reason}: {waiting.message}" if waiting is not None else text
            return (
                f"image pull failed: the cluster could not pull {self._reference or 'the image'} ({detail}); "
                "check that it was pushed (`airflow-infra build DAG_FILE`), that the nodes reach the registry "
                "(`pull_registry` in infra.yaml) and that `image_pull_secrets` grant access"
            )
        if "took too long" in text:
            return (f"pod {name} did not start within {self.target.startup_timeout}s; "
                    "raise `startup_timeout` or check the cluster's capacity")
        if status is not None and status.reason == "DeadlineExceeded":
            return (
                f"deadline exceeded: pod {name} ran longer than timeout={job.resources.timeout:g}s and was stopped; "
                "raise `timeout` or make the task faster"
            )
        terminated = next((s.terminated for s in states if s.terminated), None)
        if terminated is not None and (terminated.reason == "OOMKilled" or terminated.exit_code == 137):
            if "memory" in resource_requirements(job.resources, self.target).get("limits", {}):
                return (f"out of memory: pod {name} hit its memory limit of {format_bytes(job.resources.memory)} "
                        "and was killed (exit 137); raise `memory`")
            return (f"out of memory: pod {name} was killed (exit 137) with no memory limit set, so its node ran "
                    "short; declare `memory` (or a larger one) so it is scheduled where that much is free")
        if terminated is not None:
            return f"pod {name} failed: exit code {terminated.exit_code} ({terminated.reason or 'no reason given'})"
        return f"pod {name} failed: {text.splitlines()[0] if text else type(exc).__name__}"

    def kill(self) -> None:
        operator = self._operator_running
        if operator is None:
            return
        self._killed = True
        if operator.pod is not None:
            operator.on_kill()  # deletes the pod
            return
        # Killed between the pod's creation and the operator learning its name: find it by
        # the task folder only this call's pod carries.
        task_uri = operator.annotations[TASK_DIR_ANNOTATION]
        for pod in operator.client.list_namespaced_pod(self.target.namespace).items:
            if (pod.metadata.annotations or {}).get(TASK_DIR_ANNOTATION) == task_uri:
                operator.client.delete_namespaced_pod(pod.metadata.name, self.target.namespace)
