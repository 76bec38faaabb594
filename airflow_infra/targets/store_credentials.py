"""Per-call credentials for the artifact store, for the kinds whose calls run elsewhere
(kubernetes, batch): what keeps one call from writing another's folder.

A pod or job otherwise reaches the store with its own identity (a service account's role,
a Batch job role), which a platform grants on the whole bucket: any task could then
overwrite any DAG's results. With `store_credentials: {role_arn: ...}` on the target, the
worker asks STS, per call, for credentials of that role under a session policy that allows

    s3:PutObject, s3:AbortMultipartUpload   on the call's own folder
    s3:GetObject                            on the call's own folder, its DAG's folder, and
                                            the folder of every input it names elsewhere
                                            (a result the cache shares across DAGs)

and nothing else (no listing, no delete). AWS grants a session only what both the role's
policies and the session policy allow, so the role itself may be bucket-wide. The
credentials reach the runtime through the call's own secret (a Kubernetes Secret, a Secrets
Manager secret: the same delivery as declared connections) and the runtime uses them for
its store reads and writes only: they are never in the function's environment, a spec, a
handle or a log. They expire after `duration` seconds (at least the call's timeout plus
ten minutes, at most 12 h, the role's MaxSessionDuration permitting): a call still queued
or running then can no longer write its result.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_infra.errors import InfraEnvironmentError

if TYPE_CHECKING:
    from airflow_infra.targets.contract import Call

ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}\Z")
MAX_POLICY = 2048  # characters: STS's limit for an inline session policy's plain text
MAX_DURATION = 43200  # seconds: STS's ceiling for AssumeRole (the role's MaxSessionDuration may be lower)
TIMEOUT_MARGIN = 600  # seconds beyond a call's declared timeout: queueing, start-up, the final upload


class StoreCredentials(BaseModel):
    """infra.yaml's `store_credentials` on a kubernetes or batch target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The role the worker assumes for each call (its trust policy must let the worker's
    # AWS identity, the store connection's, call sts:AssumeRole).
    role_arn: str
    duration: int = Field(default=3600, ge=900, le=MAX_DURATION)

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        if not ROLE_ARN.match(value):
            raise ValueError(f"{value!r} is not an IAM role ARN such as 'arn:aws:iam::123456789012:role/airflow-infra-calls'")
        return value


def check_store_credentials(target: Any) -> None:
    """A target's schema check: store_credentials and pass_credentials exclude each other."""
    if target.store_credentials and target.pass_credentials:
        raise ValueError(
            "store_credentials and pass_credentials exclude each other: pass_credentials hands every call "
            "the store connection's own (bucket-wide) keys; remove it"
        )


def _arn(partition: str, bucket: str, key_prefix: str) -> str:
    return f"arn:{partition}:s3:::{bucket}/{key_prefix.strip('/')}/*"


def session_policy(call: Call, partition: str = "aws") -> str:
    """The session policy for `call`, as STS takes it (compact JSON of at most MAX_POLICY characters)."""
    from airflow_infra.artifacts import path_component

    store = call.store
    bucket = call.folder.bucket
    own = _arn(partition, bucket, call.folder.key)
    dag = _arn(partition, bucket, (store.root / path_component(call.dag_id)).key)
    inputs = sorted({_arn(partition, bucket, store.path(uri).parent.key) for uri in call.refs} - {own})
    reads = [own, dag, *(arn for arn in inputs if not arn.startswith(dag[:-1]))]
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "WriteOwnFolder", "Effect": "Allow", "Action": ["s3:PutObject", "s3:AbortMultipartUpload"], "Resource": [own]},
            {"Sid": "ReadDagAndInputs", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": reads},
        ],
    }
    text = json.dumps(document, separators=(",", ":"))
    if len(text) > MAX_POLICY:
        raise InfraEnvironmentError(
            f"{call.where}: store_credentials: the call's session policy takes {len(text)} characters, more than "
            f"the {MAX_POLICY} STS accepts: its inputs come from {len(reads) - 2} folders outside its DAG's "
            "(results the cache shares across DAGs) or its ids are very long; turn the cache off for the "
            "upstream tasks (cache=False) or shorten the DAG, task or run ids"
        )
    return text


def duration(call: Call, configured: int) -> int:
    timeout = call.resources.timeout
    wanted = max(configured, int(timeout) + TIMEOUT_MARGIN) if timeout else configured
    return min(wanted, MAX_DURATION)


def session_name(call: Call) -> str:
    """A RoleSessionName (2-64 of [\\w+=,.@-]) that CloudTrail shows: readable, and unique per call folder."""
    readable = re.sub(r"[^\w+=,.@-]", "-", f"{call.dag_id}.{call.task_id}")[:40]
    return f"{readable}.{hashlib.sha256(call.folder_uri.encode()).hexdigest()[:16]}"


def issue(call: Call, settings: StoreCredentials, conn_id: str) -> dict[str, str]:
    """Credentials for this call alone, as the runtime reads them (s3fs's key, secret, token)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=conn_id, client_type="sts")
    policy = session_policy(call, hook.conn_partition)
    try:
        answer = hook.get_conn().assume_role(
            RoleArn=settings.role_arn, RoleSessionName=session_name(call), Policy=policy,
            DurationSeconds=duration(call, settings.duration),
        )
    except Exception as exc:  # noqa: BLE001 - botocore's ClientError and friends: say it in our words
        raise InfraEnvironmentError(
            f"{call.where}: store_credentials: could not assume {settings.role_arn} for this call through "
            f"connection {conn_id!r}: {_reason(exc)}"
        ) from None
    creds = answer["Credentials"]
    call.log.info(
        "store credentials for this call: role %s, session %s, write access to %s only, until %s",
        settings.role_arn, session_name(call), call.folder_uri, creds["Expiration"],
    )
    return {"key": creds["AccessKeyId"], "secret": creds["SecretAccessKey"], "token": creds["SessionToken"]}


def _reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        error = response["Error"]
        return f"{error.get('Code')}: {error.get('Message')}"
    return f"{type(exc).__name__}: {exc}"


def document(credentials: dict[str, Any]) -> str:
    return json.dumps(credentials, separators=(",", ":"))
