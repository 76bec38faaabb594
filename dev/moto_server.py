"""moto's AWS server, plus a stand-in for the one part of the ECS container agent that AWS
Batch jobs need for `secrets`. A TEST DOUBLE: dev/start-moto.sh starts moto through this file.

What moto (5.2) does with a container job definition's `secrets` ([{name, valueFrom}]):
RegisterJobDefinition stores them and DescribeJobDefinitions returns them, but when its Batch
backend starts the job's container (a Docker container on the local engine) it passes only
the definition's and the overrides' `environment`: the secrets never reach the job.

What AWS does: the ECS container agent on the compute instance (or Fargate's agent) resolves
each `valueFrom` with the job's *execution role* as the container starts, and sets the
variable `name` to the value. The value never appears in DescribeJobs or the definition.
Without an execution role the job cannot read them.

What this stand-in does, when moto starts a job container whose definition has `secrets`:
  - resolves each `valueFrom` that is a Secrets Manager secret ARN (its SecretString; an
    ARN followed by `:json-key:version-stage:version-id` picks a key or a version, as ECS
    allows) from moto's own Secrets Manager backend, and adds `name=value` to the
    container's environment only: moto's DescribeJobs output stays as it was;
  - fails the job at start, with a status reason in ECS's words
    (`ResourceInitializationError: ...`), when the definition has no `executionRoleArn`, or
    a reference cannot be resolved (no such secret, deleted, binary, not a Secrets Manager ARN).

And the agent's memory limit, which moto does not set (its job containers run unbounded):
  - the job's MEMORY (the container overrides' resourceRequirements, else the job
    definition's; MiB) becomes the container's hard memory limit, as ECS sets it;
  - a container the kernel killed for memory (Docker's State.OOMKilled) is reported as Batch
    reports it: the attempt's container `reason` "OutOfMemoryError: Container killed due to
    memory usage", its `exitCode` 137, and the job's statusReason "Essential container in
    task exited". Any other exit keeps moto's report.

And the awslogs driver, which moto does not imitate (it puts a job's whole log into
CloudWatch Logs once its container has stopped, and names the stream in DescribeJobs only
then): the job's stream is named once its container runs, and its stdout and stderr lines
reach the stream about every second while it runs, as the awslogs driver sends them. When
moto then puts the whole log at the end, the lines already sent are not sent again.
Timestamps are the container's, in milliseconds, as moto's own.

And array jobs as Batch runs them, where moto (5.2) differs:
  - each child's container gets AWS_BATCH_JOB_ARRAY_INDEX (moto sets only AWS_BATCH_JOB_ID,
    `<parent>:<index>`);
  - the parent's status follows its children: PENDING, RUNNING once one runs, and once all
    have ended SUCCEEDED, or FAILED if any failed (moto's parent turns SUCCEEDED when all
    succeed and otherwise never ends);
  - TerminateJob on the parent terminates its children (moto stops only the parent).
moto still starts every child at once, whatever the compute environment's size.

And IAM session policies on S3 (dev/moto_session_policies.py): credentials of an assumed
role with a session policy can do on S3 only what that policy allows, as per-call store
credentials need. Everything else stays unchecked, as in moto.

What it does not do: evaluate IAM otherwise (moto checks no policy, so the execution role's
secretsmanager:GetSecretValue permission is not tested here), KMS decryption, SSM Parameter
Store references (airflow-infra does not use them; they fail the job here), `secretOptions`
of a log configuration, or re-reading a secret for a retried attempt (moto does not retry).

Nothing in airflow_infra knows of this file: the provider registers `secrets` exactly as it
would on AWS, and only this double turns them into the job's environment.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from typing import Any

from moto.batch import models as batch
from moto.core.parse import default_timestamp_parser
from moto.core.utils import unix_time_millis
from moto.secretsmanager.models import secretsmanager_backends

import moto_session_policies  # noqa: E402,F401  (dev/, this script's folder: patches moto's S3 checks on import)


class SecretNotInjected(Exception):
    """A `secrets` entry the agent could not resolve: the job fails before its container starts."""


def resolve(reference: str) -> str:
    """The value ECS would inject for one `valueFrom`."""
    parts = reference.split(":")  # secret names cannot hold ':', so the ARN is its first 7 parts
    if len(parts) < 7 or parts[0] != "arn" or parts[2] != "secretsmanager" or parts[5] != "secret":
        raise SecretNotInjected(f"{reference!r} is not a Secrets Manager secret ARN (the only kind this double resolves)")
    arn, (json_key, stage, version) = ":".join(parts[:7]), (parts[7:] + ["", "", ""])[:3]
    region, account = parts[3], parts[4]
    try:
        answer = secretsmanager_backends[account][region].get_secret_value(arn, version or None, stage or None)
    except Exception as exc:  # noqa: BLE001 - what Secrets Manager said is the reason
        raise SecretNotInjected(f"unable to retrieve secret from asm: {type(exc).__name__}: {exc}") from None
    if "SecretString" not in answer:
        raise SecretNotInjected(f"secret {arn} holds binary data; only SecretString secrets can be injected")
    value = answer["SecretString"]
    if json_key:
        try:
            value = json.loads(value)[json_key]
        except (ValueError, KeyError, TypeError):
            raise SecretNotInjected(f"secret {arn} has no JSON key {json_key!r}") from None
        value = value if isinstance(value, str) else json.dumps(value)
    return value


def injected_environment(job: batch.Job) -> dict[str, str]:
    props = job.job_definition.container_properties or {}
    secrets = props.get("secrets") or []
    if secrets and not props.get("executionRoleArn"):
        raise SecretNotInjected("the job definition has `secrets` but no executionRoleArn, the role the agent reads them with")
    return {entry["name"]: resolve(entry["valueFrom"]) for entry in secrets}


def memory_mib(job: batch.Job) -> int | None:
    """The job's MEMORY as ECS applies it: the overrides' resourceRequirements replace the definition's."""
    for requirement in (job.container_overrides or {}).get("resourceRequirements") or []:
        if requirement.get("type") == "MEMORY":
            return int(requirement["value"])
    value = job.job_definition._get_resource_requirement("memory")
    return int(value) if value else None


OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"


class _Watched:
    """A job's container whose end is reported as the agent reports it (an OOM kill)."""

    def __init__(self, container: Any, job: batch.Job):
        self._container, self._job = container, job

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        result = self._container.wait(*args, **kwargs)
        self._container.reload()
        if self._container.attrs.get("State", {}).get("OOMKilled") and self._job.latest_attempt:
            self._job.latest_attempt["container"].update({"reason": OOM_REASON, "exitCode": 137})
            self._job.job_stopped_reason = "Essential container in task exited"
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


class _Containers:
    """moto's `docker_client.containers`, whose run() starts the container with the secrets
    set, resolved at that moment (as the agent does, after the job left RUNNABLE), and the
    job's memory as its hard limit."""

    def __init__(self, containers: Any, job: batch.Job):
        self._containers, self._job = containers, job

    def run(self, **kwargs: Any) -> Any:
        try:
            secrets = injected_environment(self._job)
        except SecretNotInjected as exc:
            self._job.job_stopped_reason = f"ResourceInitializationError: unable to pull secrets: {exc}"
            raise
        memory = memory_mib(self._job)
        limits = {"mem_limit": f"{memory}m", "memswap_limit": f"{memory}m"} if memory else {}
        index = (self._job.array_properties or {}).get("index")
        array = {"AWS_BATCH_JOB_ARRAY_INDEX": str(index)} if index is not None else {}
        container = self._containers.run(
            **{**kwargs, **limits, "environment": {**kwargs.get("environment", {}), **secrets, **array}})
        threading.Thread(target=_send_logs_while_running, args=(container, self._job), daemon=True).start()
        return _Watched(container, self._job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._containers, name)


class _SentLogs:
    """moto's Logs backend as one job's thread sees it: the lines _send_logs_while_running
    has sent are not put again when moto puts the whole log at the end (counted, so that a
    line printed twice in the same millisecond is still sent twice)."""

    def __init__(self, backend: Any):
        self._backend, self._lock, self.sent = backend, threading.Lock(), Counter()

    def send(self, group: str, stream: str, events: list[dict[str, Any]]) -> None:
        with self._lock:
            self.sent.update((e["timestamp"], e["message"]) for e in events)
            self._backend.put_log_events(group, stream, events)

    def put_log_events(self, group: str, stream: str, events: list[dict[str, Any]]) -> Any:
        with self._lock:
            fresh = []
            for event in events:
                key = (event["timestamp"], event["message"])
                if self.sent[key]:
                    self.sent[key] -= 1
                else:
                    fresh.append(event)
            return self._backend.put_log_events(group, stream, fresh) if fresh else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _send_logs_while_running(container: Any, job: batch.Job) -> None:
    """The awslogs driver's part: every second, the container's complete new lines go to the
    job's stream, as moto will format them at the end (its own code: "<timestamp> <line>")."""
    import time

    logs = job._log_backend
    logs.ensure_log_group(job._log_group)
    logs.ensure_log_stream(job._log_group, job._stream_name)
    job.log_stream_name = job._stream_name
    sent = 0
    while True:
        try:
            container.reload()
            running = container.status == "running"
            text = container.logs(stdout=True, stderr=True, timestamps=True).decode(errors="replace")
        except Exception:  # noqa: BLE001 - the container is gone: moto's end-of-job put has the rest
            return
        lines = [line for line in text[: text.rfind("\n") + 1].split("\n") if line]
        events = []
        for line in lines[sent:]:
            stamp, _, message = line.partition(" ")
            events.append({"timestamp": unix_time_millis(default_timestamp_parser(stamp)), "message": message.strip()})
        if events:
            logs.send(job._log_group, job._stream_name, events)
            sent = len(lines)
        if not running:
            return
        time.sleep(1.0)


class _AgentDockerClient:
    def __init__(self, client: Any, job: batch.Job):
        self._client, self.containers = client, _Containers(client.containers, job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


_moto_run = batch.Job.run


def _run_as_the_agent(self: batch.Job) -> None:
    if self.job_definition.container_properties is not None:
        # DockerModel keeps its client in this (name-mangled) attribute; the job's thread
        # uses it for everything, and only containers.run changes.
        self._DockerModel__docker_client = _AgentDockerClient(self.docker_client, self)
        self._log_backend = _SentLogs(self._log_backend)
    _moto_run(self)


batch.Job.run = _run_as_the_agent

_moto_describe = batch.Job.describe
_ENDED = ("SUCCEEDED", "FAILED")


def _describe_array_parent(self: batch.Job) -> dict[str, Any]:
    result = _moto_describe(self)
    children = self._child_jobs
    if children:
        statuses = [child.status for child in children]
        if all(status in _ENDED for status in statuses):
            self.status = "FAILED" if "FAILED" in statuses else "SUCCEEDED"
            if self.status == "FAILED" and self.job_stopped_reason is None:
                self.job_stopped_reason = f"{statuses.count('FAILED')} of {len(statuses)} child jobs failed"
        else:
            self.status = "RUNNING" if any(s in ("STARTING", "RUNNING", *_ENDED) for s in statuses) else "PENDING"
        result["status"] = self.status
        if self.job_stopped_reason is not None:
            result["statusReason"] = self.job_stopped_reason
    return result


batch.Job.describe = _describe_array_parent

_moto_terminate = batch.BatchBackend.terminate_job


def _terminate_with_children(self: batch.BatchBackend, job_id: str, reason: str) -> None:
    _moto_terminate(self, job_id, reason)
    job = self.get_job_by_id(job_id)
    for child in (job._child_jobs or []) if job is not None else []:
        child.terminate(reason)


batch.BatchBackend.terminate_job = _terminate_with_children


if __name__ == "__main__":
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
