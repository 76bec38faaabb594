"""Durable calls on the production-shaped Airflow (tests/production.py): the worker
processes running three tasks are killed with SIGKILL while the tasks' calls run (a
container on docker, a job on moto's Batch, a pod on the fake Kubernetes API), as a lost
worker would be; Airflow fails the try when its heartbeats stop, and the next try must
reattach to the same container, job and pod, not start another, and collect their results. Counted: calls started per task,
orphans left, false successes, results lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest

from airflow_infra.client import Client
from tests.conftest import MOTO

pytestmark = [pytest.mark.integration, pytest.mark.fault]

DAG = "infra_durable"
TASKS = ("slow_docker", "slow_batch", "slow_k8s")
POD_PREFIX = "ml/slow-k8s-pod"  # the fake Kubernetes API labels each pod's container with namespace/name
JOB_NAME = f"{DAG}-slow_batch"
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


def _batch():
    return boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")


def _jobs(queue: str, statuses=ACTIVE + ("SUCCEEDED", "FAILED")) -> dict[str, str]:
    batch = _batch()
    return {j["jobId"]: j["status"] for status in statuses
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"] if j["jobName"] == JOB_NAME}


def _containers(engine, **filters) -> list:
    return engine.containers.list(all=True, filters={"label": f"org.airflow-infra.dag={DAG}", **filters})


def _pod_containers(engine, **filters) -> list:
    return [c for c in engine.containers.list(all=True, filters={"label": "airflow-infra.fake-kube", **filters})
            if c.labels["airflow-infra.fake-kube"].startswith(POD_PREFIX)]


def _task_processes(ti_id: str) -> list[int]:
    """The task process of one task instance (its title is "airflow worker -- <ti id>"), and
    its parent, the Celery pool process supervising it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"airflow worker -- {ti_id}".encode() in (entry / "cmdline").read_bytes():
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    found += [int(entry.name), parent]
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_worker_s_calls_are_reattached_not_run_again(production_airflow, batch_queue, moto_s3):
    import docker

    deployment, engine = production_airflow, docker.from_env()
    jobs_before = set(_jobs(batch_queue))
    since = int(time.time()) - 1
    run_id = deployment.trigger(DAG, {"seconds": 45})
    path = f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances"

    # Both calls running: the container, and the job (moto's Batch runs it as a container too).
    deadline = time.monotonic() + 240
    while not (_containers(engine, status="running") and _pod_containers(engine, status="running")
               and "RUNNING" in {s for j, s in _jobs(batch_queue).items() if j not in jobs_before}):
        assert time.monotonic() < deadline, f"the calls did not start:\n{deployment.log_tail()}"
        time.sleep(1)
    tis = {ti["task_id"]: ti for ti in deployment.get(path).json()["task_instances"]}
    assert all(tis[t]["state"] == "running" and tis[t]["try_number"] == 1 for t in TASKS), tis
    killed_at = time.time()
    victims = [pid for task in TASKS for pid in _task_processes(tis[task]["id"])]
    assert len(victims) == 2 * len(TASKS), f"expected each task's process and its supervisor, found {victims}"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    states = deployment.wait(DAG, run_id)
    assert states["run"] == "success", (states, deployment.log_tail())

    for task in TASKS:
        tries = deployment.get(f"{path}/{task}/tries").json()["task_instances"]
        # False successes: none. Try 1 (whose worker died) failed; try 2 succeeded.
        assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")], (task, tries)
        log = deployment.get(f"{path}/{task}/logs/2", params={"full_content": "true"}, headers={"Accept": "text/plain"}).text
        assert "try 1's call" in log and "still runs after its worker was lost: reattaching to it" in log, log[-3000:]

    # Results lost: none. Each is the one call try 1 started (it began before the kill).
    results = Client(moto_s3).run(DAG, run_id)
    for task in TASKS:
        value = results[task].result
        assert value["slept"] == 45 and value["started"] < killed_at, (task, value)

    # Calls started per task: one container, one Batch job, one pod.
    until = int(time.time())
    created = engine.events(since=since, until=until, decode=True, filters={"event": "create", "label": f"org.airflow-infra.dag={DAG}"})
    assert len(list(created)) == 1
    assert len(set(_jobs(batch_queue)) - jobs_before) == 1
    pods = [e for e in engine.events(since=since, until=until, decode=True, filters={"event": "create", "label": "airflow-infra.fake-kube"})
            if e["Actor"]["Attributes"].get("airflow-infra.fake-kube", "").startswith(POD_PREFIX)]
    assert len(pods) == 1, pods

    # Orphans: no container of the DAG's, no active job, no process of the killed tries.
    assert _containers(engine) == [] and _pod_containers(engine) == []
    assert not [j for j in _jobs(batch_queue, ACTIVE) if j not in jobs_before]
    assert not [pid for pid in victims if _alive(pid)]
