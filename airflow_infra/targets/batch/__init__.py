"""The `batch` kind: AWS Batch through the amazon provider's BatchOperator, one job definition per image."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from airflow_infra.targets.batch.secrets import PREFIX
from airflow_infra.targets.contract import TargetConfig, TargetKind
from airflow_infra.targets.store_credentials import ROLE_ARN, StoreCredentials, check_store_credentials


class BatchTarget(TargetConfig):
    """AWS Batch through the amazon provider's BatchOperator: one job definition per image."""

    kind: Literal["batch"]
    job_queue: str
    aws_conn_id: str = "aws_default"
    region: str | None = None
    job_role_arn: str | None = None
    # The role the ECS agent uses for the job (image pull, logs, secrets): needed by tasks that
    # declare connections, which reach the job as a Secrets Manager secret.
    execution_role_arn: str | None = None
    platform: Literal["EC2", "FARGATE"] = "EC2"
    # Passed to SubmitJob as is, e.g. {attempts: 3, evaluateOnExit: [{onStatusReason: "Host EC2*", action: RETRY}]}
    retry_strategy: dict[str, Any] | None = None
    tags: dict[str, str] = {}
    # Seconds between status polls (the hook's default is a random 1-10 s).
    poll_interval: float | None = Field(default=None, gt=0)
    # Wait for the job in the triggerer instead of holding a worker slot.
    deferrable: bool = False
    # Hand the connection's keys to the job as environment variables. Only for local test
    # set-ups (moto); real jobs get credentials from job_role_arn.
    pass_credentials: bool = False
    # Per-call credentials for the artifact store (targets/store_credentials.py): each job may
    # write only its own call's folder. They reach the job as a secret: needs execution_role_arn.
    store_credentials: StoreCredentials | None = None

    @model_validator(mode="after")
    def _store_credentials(self) -> BatchTarget:
        check_store_credentials(self)
        if self.store_credentials and not self.execution_role_arn:
            raise ValueError(
                "store_credentials: jobs receive them as a Secrets Manager secret, which Batch reads with the "
                f"job's execution role; set execution_role_arn (it needs secretsmanager:GetSecretValue on {PREFIX}/*)"
            )
        return self

    @field_validator("job_queue")
    @classmethod
    def _job_queue(cls, value: str) -> str:
        if not (_NAME.fullmatch(value) or _ARN.fullmatch(value)):
            raise ValueError(f"{value!r} is not a job queue name (letters, digits, '-', '_', at most 128) or ARN")
        return value

    @field_validator("job_role_arn", "execution_role_arn")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and not ROLE_ARN.match(value):
            raise ValueError(f"{value!r} is not an IAM role ARN such as 'arn:aws:iam::123456789012:role/ml-jobs'")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not an AWS region such as 'us-east-1'")
        return value


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_ARN = re.compile(r"arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-queue/[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]")


KIND = TargetKind(
    name="batch",
    schema=BatchTarget,
    runner="airflow_infra.targets.batch.runner:BatchRunner",
    needs_image=True,
    links=("airflow_infra.targets.batch.links:BatchJobLink",),
)
