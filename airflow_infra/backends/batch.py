"""The batch target: the call runs as an AWS Batch job, through the amazon provider's BatchOperator.

One job definition per image and target options, registered once and reused (a changed
image registers a new revision); per call, SubmitJob overrides only the command (two
artifact URIs: the payload stays tiny), resources and environment. The job's container
reads its call from the artifact store and writes its outputs there itself.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from airflow.sdk.exceptions import TaskDeferred

from airflow_infra.artifacts import CALL_FILE, OUTCOME_FILE
from airflow_infra.backends.base import Job, execute_delegate, job_image
from airflow_infra.config import BatchTarget, InfraConfig
from airflow_infra.backends.remote import aws_environment, require_object_store
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.links import batch_job_url, publish

DEFINITION_PREFIX = "airflow-infra-"
LOG_GROUP = "/aws/batch/job"


def _definition_name(target_name: str, reference: str) -> str:
    repository = reference.rpartition(":")[0].rpartition("/")[2]
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{DEFINITION_PREFIX}{target_name}-{repository}")[:128]


def container_properties(target: BatchTarget, reference: str, shm: int | None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "image": reference,
        "command": ["--help"],  # replaced on every submit
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
    }
    if target.job_role_arn:
        props["jobRoleArn"] = target.job_role_arn
    if target.execution_role_arn:
        props["executionRoleArn"] = target.execution_role_arn
    if shm:
        props["linuxParameters"] = {"sharedMemorySize": max(1, shm >> 20)}  # MiB
    return props


def ensure_job_definition(client: Any, name: str, target: BatchTarget, reference: str, shm: int | None, log) -> str:
    """The ARN of an ACTIVE revision with exactly these properties; registers one if none matches."""
    wanted = container_properties(target, reference, shm)
    fingerprint = hashlib.sha256(repr(sorted(wanted.items())).encode()).hexdigest()[:16]
    paginator = client.get_paginator("describe_job_definitions")
    for page in paginator.paginate(jobDefinitionName=name, status="ACTIVE"):
        for definition in page["jobDefinitions"]:
            if definition.get("tags", {}).get("airflow-infra-fingerprint") == fingerprint:
                return definition["jobDefinitionArn"]
    registered = client.register_job_definition(
        jobDefinitionName=name,
        type="container",
        containerProperties=wanted,
        platformCapabilities=[target.platform],
        tags={**target.tags, "airflow-infra-fingerprint": fingerprint},
    )
    log(f"registered job definition {registered['jobDefinitionName']}:{registered['revision']} for {reference}")
    return registered["jobDefinitionArn"]


def resource_requirements(job: Job) -> list[dict[str, str]]:
    res = job.resources
    out = [
        {"type": "VCPU", "value": f"{res.cpu:g}" if res.cpu else "1"},
        {"type": "MEMORY", "value": str(max(4, (res.memory or 512 << 20) >> 20))},  # MiB
    ]
    if res.gpu:
        out.append({"type": "GPU", "value": str(res.gpu)})
    return out


class BatchBackend:
    def __init__(self, name: str, target: BatchTarget, config: InfraConfig):
        self.name, self.target, self.config = name, target, config
        self._operator_running = None

    def _job_environment(self, job: Job, hook: Any) -> list[dict[str, str]]:
        env = {**job.environment.env, **aws_environment(hook, pass_credentials=self.target.pass_credentials)}
        return [{"name": k, "value": v} for k, v in sorted(env.items())]

    def _operator(self, job: Job) -> Any:
        from airflow.providers.amazon.aws.operators.batch import BatchOperator

        operator = BatchOperator(
            task_id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{job.task_id}.batch")[:250],
            job_name=re.sub(r"[^A-Za-z0-9_-]", "-", f"{job.dag_id}-{job.task_id}")[:128],
            job_definition="pending",
            job_queue=self.target.job_queue,
            aws_conn_id=self.target.aws_conn_id,
            region_name=self.target.region,
            tags=self.target.tags,
            retry_strategy=self.target.retry_strategy,
            awslogs_enabled=True,  # the job's CloudWatch log lands in the task log
            deferrable=self.target.deferrable,
            poll_interval=int(self.target.poll_interval or 30),
        )
        if self.target.poll_interval:
            operator.hook.DEFAULT_DELAY_MIN = operator.hook.DEFAULT_DELAY_MAX = self.target.poll_interval
        return operator

    def run(self, job: Job) -> None:
        require_object_store(job, self.name, "AWS Batch")
        reference = job_image(job, self.config)
        operator = self._operator(job)
        client = operator.hook.client
        operator.job_definition = ensure_job_definition(
            client, _definition_name(self.name, reference), self.target, reference, job.resources.shm,
            lambda line: job.log.info("%s", line),
        )
        task_uri = job.store.uri(job.task_dir)
        operator.container_overrides = {
            "command": [f"{task_uri}/{CALL_FILE}", task_uri],
            "resourceRequirements": resource_requirements(job),
            "environment": self._job_environment(job, operator.hook),
        }
        if job.resources.timeout:
            operator.submit_job_timeout = max(60, int(job.resources.timeout))  # Batch's minimum
        self._operator_running = operator
        try:
            # In deferrable mode this raises TaskDeferred after submitting: Airflow then calls
            # InfraOperator.execute_complete, which comes back to resume() below.
            execute_delegate(operator, job.context)
        except TaskDeferred:
            raise
        except Exception as exc:  # noqa: BLE001 - explained below, unless the call reported its own error
            self._fail(job, client, operator.job_id, exc)
        finally:
            self._operator_running = None
            if operator.job_id:
                hook = operator.hook
                publish(job.context, "batch_job", batch_job_url(operator.job_id, hook.conn_region_name, hook.conn_partition))

    def resume(self, job: Job, event: dict[str, Any] | None) -> None:
        operator = self._operator(job)
        try:
            operator.execute_complete(job.context, event)  # fetches the job's log, checks its status
        except Exception as exc:  # noqa: BLE001
            self._fail(job, operator.hook.client, operator.job_id or (event or {}).get("job_id"), exc)

    def _fail(self, job: Job, client: Any, job_id: str | None, exc: Exception) -> None:
        if job.store.exists(job.task_dir / OUTCOME_FILE):
            return  # the function failed and said why: InfraOperator reports that
        raise InfraTaskFailed(f"{job.where}: {self._explain(client, job_id, exc)}") from None

    def _explain(self, client: Any, job_id: str | None, exc: Exception) -> str:
        if not job_id:
            return f"the Batch job could not be submitted: {exc}"
        described = client.describe_jobs(jobs=[job_id])["jobs"]
        if not described:
            return f"Batch job {job_id} failed: {exc}"
        batch_job = described[0]
        container = batch_job.get("container", {})
        parts = [f"Batch job {job_id} ended {batch_job.get('status')}: {batch_job.get('statusReason') or 'no reason given'}"]
        code = container.get("exitCode")
        parts.append(f"exit code {code}" + (" (out of memory?)" if code == 137 else "") if code is not None else "no exit code reported")
        if container.get("reason"):
            parts.append(container["reason"])
        tail = self._log_tail(container.get("logStreamName"))
        return "; ".join(parts) + (f"\nlast lines of its log:\n{tail}" if tail else "")

    def _log_tail(self, stream: str | None, lines: int = 20) -> str:
        if not stream:
            return ""
        from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

        try:
            logs = AwsLogsHook(aws_conn_id=self.target.aws_conn_id, region_name=self.target.region).get_conn()
            events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, limit=lines)["events"]
        except Exception:  # noqa: BLE001 - the explanation is still useful without its log
            return ""
        return "\n".join(e["message"] for e in events[-lines:])

    def kill(self) -> None:
        if self._operator_running is not None:
            self._operator_running.on_kill()  # terminates the job
