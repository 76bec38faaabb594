"""Waiting for a Batch job in Airflow's triggerer, with its log in the task log as it runs.

The amazon provider's BatchJobTrigger only waits: the job's CloudWatch log reaches the task
log once the task resumes on a worker, after the job has ended. This trigger polls the job
and its log stream together and logs each new line as it arrives; Airflow writes a
trigger's log lines into the task instance's log (its `.trigger.` log file, shown with the
task's), so the job's output is there while it runs. Its event is the one
BatchOperator.execute_complete takes, plus `log_streamed`, so that the resumed task does
not fetch the whole log a second time.

boto3 is synchronous: each poll runs in a thread, so that the triggerer's event loop, shared
by every deferred task, never waits on the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

LOG_GROUP = "/aws/batch/job"
ENDED = {"SUCCEEDED": "success", "FAILED": "failure"}


class BatchCallTrigger(BaseTrigger):
    def __init__(self, job_id: str, aws_conn_id: str | None, region_name: str | None, poll_interval: float = 30.0):
        super().__init__()
        self.job_id, self.aws_conn_id, self.region_name, self.poll_interval = job_id, aws_conn_id, region_name, poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_id": self.job_id, "aws_conn_id": self.aws_conn_id, "region_name": self.region_name,
             "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
        from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

        batch = BatchClientHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        logs = AwsLogsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        token, stream = AwsLogsHook.ContinuationToken(), None
        while True:
            job = await asyncio.to_thread(self._describe, batch)
            status = job.get("status", "UNKNOWN")
            stream = (job.get("container") or {}).get("logStreamName") or stream
            if stream:
                # After the status: a job seen ended has written all its log before.
                await asyncio.to_thread(self._pass_on, logs, stream, token)
            if status in ENDED:
                yield TriggerEvent({
                    "status": ENDED[status], "job_id": self.job_id, "log_streamed": True,
                    "message": job.get("statusReason") or f"Batch job {self.job_id} {status}",
                })
                return
            await asyncio.sleep(self.poll_interval)

    def _describe(self, batch: Any) -> dict[str, Any]:
        jobs = batch.client.describe_jobs(jobs=[self.job_id])["jobs"]
        return jobs[0] if jobs else {"status": "FAILED", "statusReason": f"Batch has no job {self.job_id}"}

    def _pass_on(self, logs: Any, stream: str, token: Any) -> None:
        """Log the stream's lines after `token`, and move it past them."""
        from botocore.exceptions import ClientError

        try:
            for event in logs.get_log_events(LOG_GROUP, stream, continuation_token=token):
                self.log.info("%s", event["message"])
        except ClientError as exc:  # the stream is made by the job's first line: none yet
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
