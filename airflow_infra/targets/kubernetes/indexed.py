"""A fan-out (airflow_infra/pipeline/fanout.py) on Kubernetes: one Indexed Job through the
cncf-kubernetes provider's KubernetesJobOperator, `completions` = the chunk count, each pod
told its chunk by Kubernetes in JOB_COMPLETION_INDEX. The pod template is the one a single
call's pod gets (podspec.operator_arguments: image, resources per item, security, the two
store URIs), so an item runs as a single call would.

`backoffLimitPerIndex: 0`: a pod that dies fails its own index only, the others go on, and
the job ends Failed (FailedIndexes) once all have ended; the chunks' reports then say which
items failed, as on every target. The worker waits for the job (the provider's hook) and
says how far along it is every PROGRESS_SECONDS; pods' output is not streamed (a job of
10,000 pods): a failed item's traceback is in its chunk's report and in the task's failure.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from airflow_infra.errors import InfraTaskFailed
from airflow_infra.targets.contract import Call, Handle

PROGRESS_SECONDS = 10


def job_operator(call: Call, arguments: dict[str, Any], parallelism: int) -> Any:
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator

    arguments = {k: v for k, v in arguments.items() if k not in ("on_finish_action", "logging_interval")}
    return KubernetesJobOperator(
        task_id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{call.task_id}.job")[:250],
        **{**arguments, "deferrable": False, "get_logs": False},
        completion_mode="Indexed", completions=call.chunks, parallelism=max(1, min(parallelism, call.chunks)),
        wait_until_job_complete=True, job_poll_interval=2,
    )


def submit(operator: Any, call: Call, kind: str, target_name: str) -> Handle:
    operator.name = operator._set_name(operator.name)
    operator.pod_request_obj = operator.build_pod_request_obj(call.context)
    job = operator.build_job_request_obj(call.context)
    job.spec.backoff_limit_per_index = 0  # a dead pod fails its index alone (Kubernetes 1.29+)
    job.spec.backoff_limit = None
    try:
        operator.job = operator.create_job(job_request_obj=job)
    except Exception as exc:  # noqa: BLE001 - no job was made: say why, in the API's words
        reason = getattr(exc, "body", None) or str(exc)
        raise InfraTaskFailed(f"{call.where}: the Indexed Job could not be created: {str(reason).strip()[:2000]}") from None
    operator.job_request_obj = job
    metadata = operator.job.metadata
    call.log.info("Indexed Job %s/%s: %d pods, %d at a time", metadata.namespace, metadata.name, call.chunks, operator.parallelism)
    return Handle(kind, target_name, metadata.name, call.folder_uri, {"namespace": metadata.namespace, "job": True})


def wait(operator: Any, call: Call) -> None:
    """Until the job ends; raises if it failed (some indexes did: their reports say which items)."""
    from airflow.exceptions import AirflowException

    stop = threading.Event()
    metadata = operator.job.metadata

    def report() -> None:
        while not stop.wait(PROGRESS_SECONDS):
            try:
                status = operator.hook.get_job_status(job_name=metadata.name, namespace=metadata.namespace).status
            except Exception:  # noqa: BLE001 - progress is a courtesy: the wait reports failures
                continue
            call.log.info("fan-out: %d/%d pods of Indexed Job %s done, %d failed, %d running", status.succeeded or 0,
                          call.chunks, metadata.name, status.failed or 0, status.active or 0)

    threading.Thread(target=report, name="airflow-infra-job-progress", daemon=True).start()
    try:
        job = operator.hook.wait_until_job_complete(
            job_name=metadata.name, namespace=metadata.namespace, job_poll_interval=operator.job_poll_interval,
        )
    finally:
        stop.set()
    status = job.status
    call.log.info("Indexed Job %s ended: %d of %d pods succeeded, failed indexes: %s", metadata.name,
                  status.succeeded or 0, call.chunks, status.failed_indexes or "none")
    if error := operator.hook.is_job_failed(job=job):
        raise AirflowException(f"Indexed Job {metadata.name} failed: {error}")


def delete(client: Any, handle: Handle, namespace: str) -> None:
    """The job and its pods (Background: the job goes at once, its pods after). Safe twice."""
    from kubernetes.client import V1DeleteOptions
    from kubernetes.client.exceptions import ApiException

    try:
        client.delete_namespaced_job(handle.id, handle.details.get("namespace", namespace),
                                     body=V1DeleteOptions(propagation_policy="Background"))
    except ApiException as exc:
        if exc.status != 404:
            raise
