"""The batch target end to end on moto: real BatchOperator, jobs as Docker containers, S3 artifacts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import boto3
import pytest

from airflow_infra.client import Client
from tests.conftest import MOTO
from tests.dagrun import check_remote_escalation

pytestmark = pytest.mark.integration


def write_batch_yaml(docker_yaml, moto_s3: str, queue: str, deferrable: bool = False, rules: str = "") -> str:
    docker_yaml(  # appended under `targets:`, so the batch target comes first
        f"  gpu: {{kind: batch, job_queue: {queue}, region: us-east-1, pass_credentials: true, poll_interval: 1, "
        f"deferrable: {str(deferrable).lower()}}}\n"
        f"artifacts: {moto_s3}\n"
        + (rules or "rules:\n  - {when: \"memory >= 512Mi\", target: gpu}\n  - {target: local}\n")
    )
    return moto_s3


@pytest.fixture
def batch_yaml(docker_yaml, moto_s3, batch_queue):
    return write_batch_yaml(docker_yaml, moto_s3, batch_queue)


def job_definitions() -> list[dict]:
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")
    return [d for d in batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"] if d["jobDefinitionName"].startswith("airflow-infra-gpu")]


def test_seed_scenario_mixes_local_and_batch(dags, batch_yaml, seed_data):
    run = dags.test("recsys_seed", conf={"lr": 0.2})
    assert run.succeeded, run.output[-5000:]
    stored = Client(batch_yaml).run("recsys_seed", run.run_id)
    assert {t: stored[t].target for t in ("load", "fit_a", "fit_b", "ensemble")} == {
        "load": "local", "fit_a": "gpu", "fit_b": "gpu", "ensemble": "local"
    }
    assert sorted(v.split(".")[0] for v in stored["ensemble"].result["numpy_versions"]) == ["1", "2"]
    # The job's CloudWatch log is in the task log, through BatchOperator.
    assert "fit_b: gradient descent with numpy 2." in run.output
    links = run.links("fit_b")  # BatchOperator's job, linked from our task instance
    assert re.fullmatch(r"https://console\.aws\.amazon\.com/batch/home\?region=us-east-1#jobs/detail/[0-9a-f-]+", links["BatchJobLink"])
    assert "/v2/" in links["ImageLink"] and "PodLink" not in links
    assert len(job_definitions()) >= 2  # one per image (its reuse: tests/test_daemonless.py)


def test_failed_jobs_are_explained(dags, batch_yaml):
    run = dags.test("infra_batch_failures")
    assert not run.succeeded
    # The function's own exception comes back through the store, with its traceback.
    assert "task 'raises': the function raised ValueError: bad input on batch" in run.output
    # A job that died without a result: status reason, exit code and the tail of its log.
    assert "task 'dies': Batch job" in run.output and "ended FAILED" in run.output
    assert "exit code" in run.output and "about to die" in run.output


def test_deferrable_mode_resumes_from_the_store(dags, docker_yaml, moto_s3, batch_queue):
    store = write_batch_yaml(docker_yaml, moto_s3, batch_queue, deferrable=True)
    run = dags.test("infra_batch_failures")  # one task raises, one dies: both must resume and explain
    assert "task 'raises': the function raised ValueError: bad input on batch" in run.output
    assert "task 'dies': Batch job" in run.output and "about to die" in run.output
    assert "BatchCallTrigger" in run.output or "defer" in run.output.lower()
    assert Client(store).run("infra_batch_failures", run.run_id)["raises"].target == "gpu"


def test_an_oom_killed_job_is_retried_as_a_job_with_double_the_memory(dags, docker_yaml, moto_s3, batch_queue):
    """The moto double gives the container the job's MEMORY as its limit and reports the
    kernel's kill as Batch does (dev/moto_server.py)."""
    write_batch_yaml(docker_yaml, moto_s3, batch_queue, rules="rules:\n  - {target: gpu}\noom: {max_memory: 128Mi}\n")
    run = dags.test("infra_oom_remote")
    check_remote_escalation(run, moto_s3, "gpu", "OutOfMemoryError: Container killed due to memory usage")


@pytest.mark.fault
def test_killing_the_task_terminates_its_job(airflow_db, batch_yaml, batch_queue):
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")

    def sleeper_jobs(status: str) -> list[str]:
        listed = batch.list_jobs(jobQueue=batch_queue, jobStatus=status)["jobSummaryList"]
        return [j["jobId"] for j in listed if j["jobName"].startswith("infra_batch_sleeper")]

    before = set(sleeper_jobs("FAILED"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", "infra_batch_sleeper"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (running := sleeper_jobs("RUNNING")):
            assert proc.poll() is None and time.monotonic() < deadline, f"no job started: {proc.stdout.read()[-3000:] if proc.poll() else ''}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # what a task process receives when the task is killed
        output, _ = proc.communicate(timeout=120)
        # BatchOperator.on_kill terminated the job: moto stops its container and fails it.
        deadline = time.monotonic() + 60
        while running[0] not in set(sleeper_jobs("FAILED")) - before:
            assert time.monotonic() < deadline, f"job {running[0]} was not terminated"
            time.sleep(0.5)
        assert "task 'sleeps'" in output
        # Nothing left: no job of the DAG queued or running, no container moto started for
        # one (moto names them after the job, and removes them in a thread of its own).
        unfinished = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
        deadline = time.monotonic() + 60
        while (left := [j for s in unfinished for j in sleeper_jobs(s)] + moto_containers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def moto_containers() -> list[str]:
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", "name=infra_batch_sleeper"], capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_the_aws_double_injects_a_job_definitions_secrets_as_the_ecs_agent_does(docker_infra, batch_queue):
    """dev/moto_server.py, the stand-in for the ECS agent (moto stores `secrets` but never
    injects them): the value reaches the container's environment only (not DescribeJobs),
    with the definition's execution role; without one, or once the secret is deleted, the job
    fails at start in ECS's words. The connections tests rely on exactly this."""
    aws = {"region_name": "us-east-1", "endpoint_url": MOTO, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    batch, secretsmanager, logs = (boto3.client(s, **aws) for s in ("batch", "secretsmanager", "logs"))
    role = boto3.client("iam", **aws).get_role(RoleName=batch_queue)["Role"]["Arn"]
    marker = f"double-value-{os.urandom(4).hex()}"
    value = f"{marker}\n\"quoted\" ü"
    secret = secretsmanager.create_secret(Name=f"airflow-infra-double/{os.urandom(4).hex()}", SecretString=value)["ARN"]

    def run_job(**role_arn: str) -> dict:
        props = {
            "image": "airflow-infra/base:bookworm", "command": ["python3", "-c", "import os; print(ascii(os.environ['INJECTED']))"],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "128"}],
            "secrets": [{"name": "INJECTED", "valueFrom": secret}], **role_arn,
        }
        definition = batch.register_job_definition(jobDefinitionName="airflow-infra-double", type="container", containerProperties=props)
        job_id = batch.submit_job(jobName="double", jobQueue=batch_queue, jobDefinition=definition["jobDefinitionArn"])["jobId"]
        deadline = time.monotonic() + 120
        while (job := batch.describe_jobs(jobs=[job_id])["jobs"][0])["status"] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, job["status"]
            time.sleep(0.3)
        batch.deregister_job_definition(jobDefinition=definition["jobDefinitionArn"])
        return job

    job = run_job(executionRoleArn=role)
    assert job["status"] == "SUCCEEDED", job.get("statusReason")
    printed = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=job["container"]["logStreamName"])["events"]
    assert [e["message"] for e in printed] == [ascii(value)]
    assert marker not in str(job)  # DescribeJobs shows no value
    job = run_job()
    assert job["status"] == "FAILED" and "no executionRoleArn" in job["statusReason"]
    assert job["statusReason"].startswith("ResourceInitializationError: unable to pull secrets")
    secretsmanager.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
    job = run_job(executionRoleArn=role)
    assert job["status"] == "FAILED" and "unable to retrieve secret from asm" in job["statusReason"]
