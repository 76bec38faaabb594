"""A call's secrets in a Batch job (its Airflow connections, its store credentials): a
Secrets Manager secret per call, referenced from a job definition revision of its own.

AWS Batch injects a job definition's `secrets` ([{name, valueFrom: secret ARN}]) into the
container's environment as it starts (the ECS agent reads them with the job's execution
role), and SubmitJob's containerOverrides cannot carry them. So a call that declares
connections, or runs on a target with `store_credentials`, gets, just before it is submitted:

  - a secret `airflow-infra/<dag>/<task>/<run>/<map index>/<try>` holding a JSON object with
    up to two keys, "connections" and "store", each a JSON document as a string (the names'
    parts escaped so that distinct calls never share a name), tagged;
  - a revision of the image's job definition that injects each key (`ARN:key::`, ECS's way
    of picking one JSON key) as its own variable, VALUE_VARIABLE and STORE_VARIABLE, and
    tells the runtime to read and unset them before the user's code runs
    (AIRFLOW_INFRA_CONNECTIONS=env:..., AIRFLOW_INFRA_STORE_CREDENTIALS=env:...).

Both go (the secret force-deleted, with no recovery window; the revision deregistered) when
the call is collected or killed. Values are never in containerOverrides, job parameters,
the environment Batch describes, tags, a handle or a log: only the secret holds them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from airflow_infra import runtime
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.targets.contract import Call

PREFIX = "airflow-infra"
VALUE_VARIABLE = "AIRFLOW_INFRA_CONNECTIONS_JSON"  # set by Batch from the secret; unset by the runtime
STORE_VARIABLE = "AIRFLOW_INFRA_STORE_CREDENTIALS_JSON"  # likewise, for store_credentials
# The secret's keys -> (the variable Batch sets from each, the runtime's variable naming it).
KEYS = {"connections": (VALUE_VARIABLE, runtime.CONNECTIONS), "store": (STORE_VARIABLE, runtime.STORE_CREDENTIALS)}
MAX_VALUE = 65536  # Secrets Manager's limit for a SecretString, in bytes
MAX_NAME = 512
TAGS = {"airflow-infra-purpose": "call-secrets"}  # what finds leftovers: names say which call

# Characters a part of the name keeps; '@' escapes every other byte (as '@' + two hex digits),
# so the escaped parts never contain '/' and the name is injective.
_KEEP = re.compile(r"[A-Za-z0-9_+=.-]")


def _escape(part: str) -> str:
    return "".join(c if _KEEP.fullmatch(c) else "".join(f"@{b:02x}" for b in c.encode()) for c in part)


def secret_name(call: Call) -> str:
    """The call's own secret name: one per DAG, task, run, map index and try."""
    parts = (call.dag_id, call.task_id, call.run_id, str(call.map_index), str(call.try_number))
    name = "/".join((PREFIX, *map(_escape, parts)))
    if len(name) > MAX_NAME:  # a long run id: keep it readable, and distinct through the hash
        name = f"{name[:MAX_NAME - 66]}/{hashlib.sha256(name.encode()).hexdigest()}"
    return name


def documents(call: Call, store_credentials: dict[str, str] | None) -> dict[str, str]:
    """What the call's secret holds, by key (see KEYS): only what the call has."""
    held = {}
    if call.connections:
        held["connections"] = json.dumps(call.connections.document())  # ASCII: control characters and unicode escaped
    if store_credentials:
        held["store"] = json.dumps(store_credentials)
    return held


def create_secret(client: Any, call: Call, tags: dict[str, str], store_credentials: dict[str, str] | None = None) -> str:
    """Store the call's connections and store credentials in its secret (created, or updated
    if a crashed attempt of the same try left it behind); returns its ARN."""
    value = json.dumps(documents(call, store_credentials))
    if len(value) > MAX_VALUE:
        raise InfraTaskFailed(
            f"{call.where}: connections: their values take {len(value)} bytes as JSON, more than the "
            f"{MAX_VALUE} a Secrets Manager secret holds; declare fewer connections or move large extras elsewhere"
        )
    name = secret_name(call)
    tag_list = [{"Key": k, "Value": v} for k, v in {**tags, **TAGS}.items()]
    try:
        return client.create_secret(Name=name, SecretString=value, Tags=tag_list)["ARN"]
    except client.exceptions.ResourceExistsException:
        client.tag_resource(SecretId=name, Tags=tag_list)
        return client.put_secret_value(SecretId=name, SecretString=value)["ARN"]


def delete_secret(client: Any, arn: str) -> None:
    try:
        client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    except client.exceptions.ResourceNotFoundException:
        pass  # gone already


def with_secret(properties: dict[str, Any], arn: str, keys: list[str]) -> dict[str, Any]:
    """The job definition's container properties, with each of the secret's `keys` injected
    as its own variable, and the runtime told where each is."""
    return {
        **properties,
        "secrets": [{"name": KEYS[key][0], "valueFrom": f"{arn}:{key}::"} for key in keys],
        "environment": [{"name": KEYS[key][1], "value": f"env:{KEYS[key][0]}"} for key in keys],
    }


def deregister(client: Any, arn: str) -> None:
    client.deregister_job_definition(jobDefinition=arn)
