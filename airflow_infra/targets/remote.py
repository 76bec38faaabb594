"""What the targets that run on other machines (Kubernetes, Batch) share: an object store the
job can reach, an image in the registry, and the environment that lets the job use the store."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow_infra.targets.contract import Call
from airflow_infra.errors import InfraEnvironmentError


def require_object_store(call: Call, target_name: str, what: str) -> None:
    if call.store.is_local:
        raise InfraEnvironmentError(
            f"{call.where}: target {target_name!r} runs on {what}, which cannot see this worker's files; "
            "set `artifacts:` in infra.yaml to an object store URL such as s3://aws_default@bucket/prefix"
        )


def issue_store_credentials(call: Call, target: Any) -> dict[str, str] | None:
    """This call's own store credentials when the target has `store_credentials`, else None
    (the pod or job uses its own identity)."""
    settings = target.store_credentials
    if settings is None:
        return None
    if not call.store.url.startswith("s3://"):
        raise InfraEnvironmentError(
            f"{call.where}: store_credentials are AWS credentials (sts:AssumeRole) and the artifact store is "
            f"{call.store.url.partition('://')[0]}://; use an s3:// store or remove store_credentials from the target"
        )
    from airflow_infra.targets.store_credentials import issue

    return issue(call, settings, store_conn_id(call.store.url) or "aws_default")


def store_conn_id(url: str) -> str | None:
    """The Airflow connection named in an object store URL (s3://conn_id@bucket/...), if any."""
    netloc = urlsplit(url).netloc
    return netloc.partition("@")[0] if "@" in netloc else None


def aws_environment(hook: Any, *, pass_credentials: bool) -> dict[str, str]:
    """Variables that point boto/s3fs in the job at the connection's endpoint and region.

    Keys are passed only with pass_credentials (local test set-ups): real jobs get theirs
    from their role or service account."""
    env: dict[str, str] = {}
    if hook.conn_config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = hook.conn_config.endpoint_url
    if hook.conn_region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_region_name
    if pass_credentials:
        creds = hook.get_credentials()
        env.update({"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key})
        if creds.token:
            env["AWS_SESSION_TOKEN"] = creds.token
    return env


def execute_delegate(operator: Any, context: Any) -> Any:
    """Run a provider operator's execute inside ours (composition), as the task runner would:
    with its sentinel, so Airflow does not warn about an operator called outside the runner."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    return operator.execute(context, **{f"{type(operator).__name__}__sentinel": ExecutorSafeguard.sentinel_value})
