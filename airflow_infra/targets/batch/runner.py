"""The batch kind's runner: the call runs as an AWS Batch job, through the amazon provider's BatchOperator.

One job definition per image and target options, registered once and reused (a changed
image registers a new revision); per call, SubmitJob overrides only the command (two
artifact URIs: the payload stays tiny), resources and environment. The job's container
reads its call from the artifact store and writes its outputs there itself. A call that
declares connections, or runs with per-call store credentials, gets a secret and a
definition revision of its own (secrets.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

from airflow_infra import runtime
from airflow_infra.artifacts import CALL_FILE
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.targets.batch import BatchTarget, secrets
from airflow_infra.targets.batch.links import batch_job_url
from airflow_infra.targets.batch.trigger import array_progress
from airflow_infra.targets.contract import ENDED, GONE, RUNNING, Call, Deferral, Handle, Runner
from airflow_infra.targets.image import prepare_image
from airflow_infra.targets.oom import out_of_memory
from airflow_infra.targets.remote import aws_environment, issue_store_credentials, require_object_store

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


def memory_mib(resources) -> int:
    """The MEMORY a job is given (MiB, Batch's unit): the declared memory, or 512 MiB."""
    return max(4, (resources.memory or 512 << 20) >> 20)


def resource_requirements(call: Call) -> list[dict[str, str]]:
    res = call.resources
    out = [
        {"type": "VCPU", "value": f"{res.cpu:g}" if res.cpu else "1"},
        {"type": "MEMORY", "value": str(memory_mib(res))},
    ]
    if res.gpu:
        out.append({"type": "GPU", "value": str(res.gpu)})
    return out


# A job in these states has not ended: a later try can follow it (pipeline.durable).
ACTIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")

# How Batch says it killed a container for memory (its container or attempt reason).
OOM_REASON = "OutOfMemoryError"


def explain_job(batch_job: dict[str, Any], memory_limit: int) -> str:
    """Why a described job ended without an outcome. Out of memory only where Batch says so
    (OutOfMemoryError): an exit code of 137 is also a kill by a person or a spot reclaim."""
    container = batch_job.get("container", {})
    attempts = [a.get("container", {}) for a in batch_job.get("attempts", [])]
    reasons = [r for r in (container.get("reason"), *(a.get("reason") for a in attempts[-1:]), batch_job.get("statusReason")) if r]
    oom = next((r for r in reasons if r.startswith(OOM_REASON)), None)
    if oom is not None:
        return out_of_memory(memory_limit, f"Batch job {batch_job.get('jobId')}: {oom}")
    parts = [f"Batch job {batch_job.get('jobId')} ended {batch_job.get('status')}: {batch_job.get('statusReason') or 'no reason given'}"]
    code = container.get("exitCode")
    parts.append(f"exit code {code}" if code is not None else "no exit code reported")
    if container.get("reason"):
        parts.append(container["reason"])
    return "; ".join(parts)


class BatchRunner(Runner):
    kind = "batch"
    delivers_connections = True  # a Secrets Manager secret per call, in a job definition revision of its own (secrets.py)
    fan_out, max_chunks = "array", 10_000  # an array job's most children

    _reference = ""
    _operator: Any = None

    @classmethod
    def connections_refusal(cls, target: BatchTarget) -> str | None:
        if target.execution_role_arn:
            return None
        return (
            "it has no `execution_role_arn`, the role Batch reads a job's secrets with (it needs "
            f"secretsmanager:GetSecretValue on {secrets.PREFIX}/*); set one in infra.yaml"
        )

    def prepare(self, call: Call) -> None:
        require_object_store(call, self.name, "AWS Batch")
        self._reference = prepare_image(call, self.config)

    def _make_operator(self, call: Call) -> Any:
        from airflow.providers.amazon.aws.operators.batch import BatchOperator

        operator = BatchOperator(
            task_id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{call.task_id}.batch")[:250],
            job_name=re.sub(r"[^A-Za-z0-9_-]", "-", f"{call.dag_id}-{call.task_id}")[:128],
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
        self._operator = operator
        return operator

    def submit(self, call: Call) -> Handle:
        operator = self._make_operator(call)
        name = _definition_name(self.name, self._reference)
        operator.job_definition = ensure_job_definition(
            operator.hook.client, name, self.target, self._reference, call.resources.shm,
            lambda line: call.log.info("%s", line),
        )
        operator.container_overrides = {
            "command": [f"{call.folder_uri}/{CALL_FILE}", call.folder_uri],
            "resourceRequirements": resource_requirements(call),
            "environment": self._job_environment(call, operator.hook),
        }
        if call.chunks > 1:  # a fan-out: one child per chunk, each told its index by Batch
            operator.array_properties = {"size": call.chunks}
        elif call.chunks == 1:  # Batch takes no array of one: the job's one chunk, named
            operator.container_overrides["environment"].append({"name": runtime.ONE_CHUNK, "value": "0"})
        if call.resources.timeout:
            operator.submit_job_timeout = max(60, int(call.resources.timeout))  # Batch's minimum
        details: dict[str, Any] = {}  # stored with the handle: a resumed attempt releases them too
        store = issue_store_credentials(call, self.target)
        try:
            if call.connections or store:
                details["secret"] = secrets.create_secret(self._secrets_client(), call, self.target.tags, store)
                keys = list(secrets.documents(call, store))
                operator.job_definition = details["definition"] = self._call_definition(call, name, details["secret"], keys)
            operator.submit_job(call.context)
        except Exception as exc:  # noqa: BLE001 - nothing was started: release what was made, say why
            self._release(details)
            raise InfraTaskFailed(f"{call.where}: the Batch job could not be submitted: {exc}") from None
        hook = operator.hook
        call.publish_link("batch_job", batch_job_url(operator.job_id, hook.conn_region_name, hook.conn_partition))
        return Handle(self.kind, self.name, operator.job_id, call.folder_uri, details)

    def _call_definition(self, call: Call, name: str, secret_arn: str, keys: list[str]) -> str:
        """A revision of the image's job definition for this call alone: the one place Batch
        takes `secrets` from. Untagged with a fingerprint, so ensure_job_definition never reuses it."""
        registered = self._operator.hook.client.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties=secrets.with_secret(
                container_properties(self.target, self._reference, call.resources.shm), secret_arn, keys
            ),
            platformCapabilities=[self.target.platform],
            tags={**self.target.tags, **secrets.TAGS},
        )
        call.log.info("registered job definition %s:%s for this call's secrets (%s)", name, registered["revision"], ", ".join(keys))
        return registered["jobDefinitionArn"]

    def _secrets_client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.secrets_manager import SecretsManagerHook

        return SecretsManagerHook(aws_conn_id=self.target.aws_conn_id, region_name=self.target.region).conn

    def _release(self, details: dict[str, Any]) -> None:
        """Deregister the call's definition revision and force-delete its secret, once each
        (popped from the handle: collect after kill finds nothing left to do)."""
        if details.get("definition"):
            client = (self._operator.hook if self._operator is not None else self._batch_hook()).client
            secrets.deregister(client, details.pop("definition"))
        if details.get("secret"):
            secrets.delete_secret(self._secrets_client(), details.pop("secret"))

    def _batch_hook(self) -> Any:
        from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook

        return BatchClientHook(aws_conn_id=self.target.aws_conn_id, region_name=self.target.region)

    def _job_environment(self, call: Call, hook: Any) -> list[dict[str, str]]:
        env = {**call.environment.env, **aws_environment(hook, pass_credentials=self.target.pass_credentials)}
        return [{"name": k, "value": v} for k, v in sorted(env.items())]

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        operator = self._operator
        if not self.target.deferrable:
            with array_progress(call, handle.id, operator.hook.client):
                operator.monitor_job(call.context)  # follows the job, its log into the task log; raises if it failed
            return None
        from airflow_infra.targets.batch.trigger import BatchCallTrigger

        # As BatchOperator.execute defers after its own submit, but with the job's log passed
        # into the task log while it runs (the provider's trigger only waits).
        trigger = BatchCallTrigger(handle.id, operator.aws_conn_id, operator.region_name, operator.poll_interval)
        timeout = dt.timedelta(seconds=call.resources.timeout + 600) if call.resources.timeout else None
        return Deferral(trigger, timeout)

    def resume(self, call: Call, handle: Handle, event: dict[str, Any] | None) -> Deferral | None:
        operator = self._make_operator(call)
        event = event or {"status": "unknown", "job_id": handle.id}
        if event.get("log_streamed"):
            operator.awslogs_enabled = False  # the trigger passed it on as it came
        operator.execute_complete(call.context, event)  # status (and the log, if not streamed)
        return None

    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        client = (self._operator or self._make_operator(call)).hook.client
        described = client.describe_jobs(jobs=[handle.id])["jobs"]
        if not described:
            return f"Batch job {handle.id} failed: {error}"
        batch_job = described[0]
        tail = self._log_tail(batch_job.get("container", {}).get("logStreamName"))
        return explain_job(batch_job, memory_mib(call.resources) << 20) + (f"\nlast lines of its log:\n{tail}" if tail else "")

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

    def collect(self, call: Call, handle: Handle) -> None:
        self._release(handle.details)  # the job has ended: Batch has read its secret

    def status(self, call: Call, handle: Handle) -> str:
        described = self._batch_hook().client.describe_jobs(jobs=[handle.id])["jobs"]
        if not described:
            return GONE
        # The handle comes from the task state store, which Airflow's REST API can write: a
        # job is followed (its log shown, its secret released) only if it runs this very call.
        if f"{call.folder_uri}/{CALL_FILE}" not in (described[0].get("container") or {}).get("command", []):
            call.log.warning("Batch job %s does not run this task instance's call: not followed", handle.id[:128])
            return GONE
        return RUNNING if described[0]["status"] in ACTIVE_STATUSES else ENDED

    def reattach(self, call: Call, handle: Handle) -> None:
        self._make_operator(call).job_id = handle.id  # wait() follows it, its log included

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        operator = self._operator
        try:
            if operator is not None and handle.id:
                operator.job_id = handle.id
                operator.on_kill()  # terminates the job
        finally:
            self._release(handle.details)
