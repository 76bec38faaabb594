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
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

LOG_GROUP = "/aws/batch/job"
ENDED = {"SUCCEEDED": "success", "FAILED": "failure"}


PROGRESS_SECONDS = 10


def describe_progress(job: dict[str, Any]) -> str | None:
    """An array job's children, counted: a fan-out's progress line (None for a plain job)."""
    summary = (job.get("arrayProperties") or {}).get("statusSummary")
    if not summary:
        return None
    size = job["arrayProperties"].get("size") or sum(summary.values())
    running = sum(summary.get(s, 0) for s in ("STARTING", "RUNNING"))
    return (f"fan-out: {summary.get('SUCCEEDED', 0)}/{size} children of Batch job {job.get('jobId')} done, "
            f"{summary.get('FAILED', 0)} failed, {running} running")


@contextmanager
def array_progress(call: Any, job_id: str, client: Any) -> Iterator[None]:
    """While a blocking worker waits for a fan-out's array job, say how far along it is
    every PROGRESS_SECONDS (one line, not one per child)."""
    if call.chunks < 2:
        yield
        return
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(PROGRESS_SECONDS):
            try:
                jobs = client.describe_jobs(jobs=[job_id])["jobs"]
            except Exception:  # noqa: BLE001 - progress is a courtesy: the wait itself reports failures
                continue
            line = describe_progress(jobs[0]) if jobs else None
            if line:
                call.log.info("%s", line)

    thread = threading.Thread(target=report, name="airflow-infra-array-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


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
        token, stream, said = AwsLogsHook.ContinuationToken(), None, 0.0
        while True:
            job = await asyncio.to_thread(self._describe, batch)
            status = job.get("status", "UNKNOWN")
            progress = describe_progress(job)  # a fan-out's array job: its children, counted
            if progress and (time.monotonic() - said >= PROGRESS_SECONDS or status in ENDED):
                self.log.info("%s", progress)
                said = time.monotonic()
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
