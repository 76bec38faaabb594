"""The batch kind's extra link: the task instance's Batch job in the AWS console."""

from __future__ import annotations

from airflow_infra.links import InfraLink


def batch_job_url(job_id: str, region: str | None, partition: str = "aws") -> str:
    domain = {"aws-cn": "amazonaws.cn", "aws-us-gov": "amazonaws-us-gov.com"}.get(partition, "aws.amazon.com")
    return f"https://console.{domain}/batch/home?region={region or 'us-east-1'}#jobs/detail/{job_id}"


class BatchJobLink(InfraLink):
    name = "Batch job"
    part = "batch_job"
