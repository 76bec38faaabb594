"""Faults get one clear error and leave nothing behind (issue 12): the Docker engine lost
mid-task, a container dying without a result, Airflow's execution_timeout and a killed task,
on the docker and the batch (moto) target, each ending with a count of what is left: 0.

Kubernetes is left out here: its test double is shared with other suites, whose pods
would show in the counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from airflow_infra.client import Client
from tests.conftest import DAGS, MOTO
from tests.dagrun import _RUN_ID, DagRun
from tests.private_engine import PrivateEngine
from tests.test_batch import write_batch_yaml

pytestmark = [pytest.mark.integration, pytest.mark.fault]

LABEL = "org.airflow-infra"
# Batch job states that are not final: a job in one of them is still queued or running.
UNFINISHED_JOB_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


@pytest.fixture
def private_engine():
    engine = PrivateEngine()
    try:
        engine.start()
        yield engine
    finally:
        engine.teardown()


def shared_engine_containers(*filters: str) -> list[str]:
    """Containers (running or not) on the shared engine matching every `--filter`."""
    args = [arg for f in filters for arg in ("--filter", f)]
    return subprocess.run(["docker", "ps", "-aq", *args], capture_output=True, text=True, check=True).stdout.split()


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, seconds: float = 300):
    """Poll until `predicate()` is truthy (a readiness wait, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert proc is None or proc.poll() is None, f"the DAG run ended before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)
    return value


def start_dags_test(dag_id: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", dag_id], stdout=out, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, env={**os.environ, **env},
        )


def finished_run(dag_id: str, proc: subprocess.Popen, log: Path, home: Path) -> DagRun:
    output = log.read_text()
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    match = _RUN_ID.search(finished[-1]) if finished else None
    return DagRun(dag_id, proc.returncode, output, match.group(1) if match else None, home / "infra" / "artifacts")


def build_images(dag_file: Path) -> None:
    """Build and push the DAG's images on the shared engine (the CI step, `airflow-infra build`)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from airflow_infra.cli import main; sys.exit(main())", "build", str(dag_file)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "AIRFLOW_INFRA_TARGET": "docker"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_engine_lost_mid_task_is_one_clear_error_and_the_next_try_removes_its_container(
    dags, docker_yaml, private_engine, tmp_path
):
    docker_yaml()
    # The private engine has no base image to build on: it pulls the images from the
    # registry, as a worker with `builder: none` does.
    build_images(DAGS / "infra_faults.py")
    log = tmp_path / "dags-test.log"
    env = {"AIRFLOW_INFRA_TARGET": "docker", "DOCKER_HOST": private_engine.host}
    proc = start_dags_test("infra_engine_loss", log, env)
    of_the_task = f"{LABEL}.task=outlives_engine"
    try:
        wait_for(lambda: private_engine.docker("ps", "-q", "--filter", f"label={of_the_task}").stdout.split(), "try 1's container", proc)
        private_engine.kill_daemons()
        wait_for(lambda: "the Docker engine was lost" in log.read_text(), "try 1 to fail", proc)
        private_engine.start()
        # The restored engine still lists try 1's container (stopped by the restore): what
        # try 2 must remove.
        left_by_try_1 = private_engine.containers(of_the_task)
        assert len(left_by_try_1) == 1
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run = finished_run("infra_engine_loss", proc, log, dags.home)
    out = run.output
    assert run.succeeded, out[-5000:]
    error = "DAG 'infra_engine_loss', task 'outlives_engine': the Docker engine was lost while the task's container airflow-infra-"
    assert error in out and out.count("the Docker engine was lost") == 1  # said once, not once per layer
    assert "docker.errors" not in out and "urllib3" not in out and "requests/adapters" not in out  # no client traceback
    assert "out of memory" not in out and "cannot be pickled" not in out
    assert "that try 1 of this task left behind" in out  # try 2 removed it, and said so
    assert run.result("outlives_engine") == 5 + 2  # try 2's result, from the upstream artifact
    assert run.result("before") == 5
    # Try 1 wrote nothing it did not finish: its folder holds only what was written before it ran.
    try_1, try_2 = Client(f"file://{run.artifacts}").run("infra_engine_loss", run.run_id)["outlives_engine"].tries()
    assert (try_1.try_number, try_2.try_number) == (1, 2)
    assert {p.name for p in try_1.path.iterdir()} <= {"call.pkl", "call.json", "handle.json"}
    assert private_engine.containers(f"{LABEL}.dag=infra_engine_loss") == []


def test_dead_and_overrunning_containers_leave_nothing_on_docker(dags, docker_yaml):
    docker_yaml()
    run = dags.test("infra_container_faults", env={"AIRFLOW_INFRA_TARGET": "docker"})
    assert "task 'exits_hard': the task process died (exit code 42) before writing a result" in run.output
    assert "about to exit" in run.output
    assert "AirflowTaskTimeout" in run.output or "Timeout" in run.output
    assert "out of memory" not in run.output
    assert run.result("afterwards") == 7
    assert run.outcome("exits_hard") is None and run.outcome("overruns") is None
    assert shared_engine_containers(f"label={LABEL}.dag=infra_container_faults") == []


def test_killing_the_task_removes_its_container_on_docker(dags, docker_yaml, tmp_path):
    docker_yaml()
    log = tmp_path / "dags-test.log"
    proc = start_dags_test("infra_docker_sleeper", log, {"AIRFLOW_INFRA_TARGET": "docker"})
    of_the_dag = f"label={LABEL}.dag=infra_docker_sleeper"
    try:
        wait_for(lambda: "sleeping until killed" in log.read_text(), "the container to run", proc)
        assert len(shared_engine_containers(of_the_dag, "status=running")) == 1
        proc.send_signal(signal.SIGTERM)  # what a task process receives when the task is killed
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert shared_engine_containers(of_the_dag) == []


def test_dead_and_overrunning_jobs_leave_nothing_on_batch(dags, docker_yaml, moto_s3, batch_queue):
    store = write_batch_yaml(docker_yaml, moto_s3, batch_queue)
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")

    def unfinished_jobs() -> list[str]:
        return [
            job["jobId"]
            for status in UNFINISHED_JOB_STATES
            for job in batch.list_jobs(jobQueue=batch_queue, jobStatus=status)["jobSummaryList"]
            if job["jobName"].startswith("infra_container_faults")
        ]

    def moto_containers() -> list[str]:
        return shared_engine_containers("name=infra_container_faults")  # moto names them after the job

    run = dags.test("infra_container_faults")
    assert "task 'exits_hard': Batch job" in run.output and "exit code" in run.output and "about to exit" in run.output
    assert "AirflowTaskTimeout" in run.output or "Timeout" in run.output
    assert "out of memory" not in run.output
    stored = Client(store).run("infra_container_faults", run.run_id)  # the S3 store
    assert stored["afterwards"].result == 7
    assert stored["exits_hard"][-1].outcome is None and stored["overruns"][-1].outcome is None
    assert stored["exits_hard"].target == "gpu" and stored["overruns"].target == "gpu"  # both ran on batch
    # moto stops a terminated job's container in a thread of its own: give it time to.
    wait_for(lambda: not unfinished_jobs() and not moto_containers(), "the jobs to end", seconds=120)
    assert unfinished_jobs() == [] and moto_containers() == []


@pytest.mark.parametrize("kind", ["docker", "batch"])
def test_a_registry_that_is_down_fails_the_task_clearly_and_starts_nothing(dags, infra_yaml, moto_s3, batch_queue, kind):
    target = {
        "docker": "{kind: docker}",
        "batch": f"{{kind: batch, job_queue: {batch_queue}, region: us-east-1, pass_credentials: true, poll_interval: 1}}",
    }[kind]
    infra_yaml(  # nothing listens on port 1
        f"registry: 127.0.0.1:1/ml\nartifacts: {moto_s3}\ntargets:\n  remote: {target}\n"
        'rules:\n  - {when: "memory >= 512Mi", target: remote}\n  - {target: local}\n'
    )
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")

    def jobs_of_the_dag() -> list[str]:  # in any state: none may have been submitted
        return [
            job["jobId"]
            for status in (*UNFINISHED_JOB_STATES, "SUCCEEDED", "FAILED")
            for job in batch.list_jobs(jobQueue=batch_queue, jobStatus=status)["jobSummaryList"]
            if job["jobName"].startswith("infra_registry_down")
        ]

    before = set(jobs_of_the_dag())
    run = dags.test("infra_registry_down")
    assert "DAG 'infra_registry_down', task 'needs_image': the registry 127.0.0.1:1 cannot be reached" in run.output
    assert "out of memory" not in run.output and "cannot be pickled" not in run.output
    stored = Client(moto_s3).run("infra_registry_down", run.run_id)
    assert stored["afterwards"].result == 7
    tries = stored["needs_image"].tries() if "needs_image" in stored.tasks else []
    assert all(call.outcome is None for call in tries)  # nothing claims the call ran
    assert set(jobs_of_the_dag()) - before == set()
    assert shared_engine_containers(f"label={LABEL}.dag=infra_registry_down") == []  # docker's
    assert shared_engine_containers("name=infra_registry_down") == []  # moto's
