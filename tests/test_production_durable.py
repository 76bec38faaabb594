"""Durable calls on the production-shaped Airflow (tests/production.py), with faults
injected mid-run and counted. Named to run beside test_production.py: the session's
deployment starts with the first test that uses it and runs until the session ends, so its
tests stay together at the end of the alphabet, not spread over the whole run. The faults:

  - the worker processes running four tasks are killed with SIGKILL while their calls run
    (a process group on local, a container on docker, a job on moto's Batch, a pod on the
    fake Kubernetes API), as a lost worker would be: Airflow fails the try when its
    heartbeats stop, and the next try must reattach to the same process, container, job
    and pod and collect their results;
  - the same tasks' supervisors get SIGTERM, as when their worker shuts down: each try
    leaves its call running and fails at once, and the next try reattaches;
  - the same tasks are marked failed through the REST API mid-call: their calls are stopped;
  - the scheduler is killed and started again while those calls run;
  - the triggerer is killed and started again while a pod and a job are deferred.

Each test counts calls started per task (== 1), orphans left at the end (containers,
pods, active jobs, processes: 0), false successes (0) and results lost (0). A local call is
counted by the line it prints when it starts, across all the tries' logs, and found while it
runs by its scratch folder (airflow_infra/targets/local/runner.py's marker names its store
folder)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest

from airflow_infra.client import Client
from tests.conftest import MOTO, REPO

pytestmark = [pytest.mark.integration, pytest.mark.fault]

ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
# Each DAG's tasks by target, and how the fake Kubernetes API labels its task's pod container
# (namespace/name: the operator names the pod after the task).
BLOCKING = {"dag": "infra_durable", "local": "slow_local", "docker": "slow_docker", "batch": "slow_batch", "k8s": "slow_k8s",
            "pod": "ml/slow-k8s-"}
DEFERRED = {"dag": "infra_durable_deferred", "local": None, "docker": None, "batch": "deferred_batch", "k8s": "deferred_k8s",
            "pod": "ml/deferred-k8s-"}
# How long each call sleeps: past the kill, the 20 s heartbeat timeout and the next try's start,
# for the worker test; past a restart for the others.
SECONDS = {"worker": 75, "restart": 30}


def _batch():
    return boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")


class Calls:
    """What one run of a DAG started on the docker engine (docker-target containers, the
    fake Kubernetes API's pod containers) and on moto's Batch, counted from the engine's
    events and Batch's job list since the run began."""

    def __init__(self, deployment, queue: str, dag: dict[str, str | None]):
        import docker

        self.deployment, self.queue, self.dag = deployment, queue, dag
        self.engine = docker.from_env()
        self.job_name = f"{dag['dag']}-{dag['batch']}"
        self.jobs_before = set(self._jobs())
        self.servers_before = set(_runtime_servers())
        self.since = int(time.time()) - 1

    def _jobs(self, statuses=ACTIVE + ("SUCCEEDED", "FAILED")) -> dict[str, str]:
        batch = _batch()
        return {j["jobId"]: j["status"] for status in statuses
                for j in batch.list_jobs(jobQueue=self.queue, jobStatus=status)["jobSummaryList"] if j["jobName"] == self.job_name}

    def jobs(self, statuses=ACTIVE + ("SUCCEEDED", "FAILED")) -> dict[str, str]:
        return {j: s for j, s in self._jobs(statuses).items() if j not in self.jobs_before}

    def containers(self, **filters) -> list:
        if not self.dag["docker"]:
            return []
        return self.engine.containers.list(all=True, filters={"label": f"org.airflow-infra.dag={self.dag['dag']}", **filters})

    def pods(self, **filters) -> list:
        return [c for c in self.engine.containers.list(all=True, filters={"label": "airflow-infra.fake-kube", **filters})
                if c.labels["airflow-infra.fake-kube"].startswith(self.dag["pod"])]

    def local(self) -> dict[Path, list[int]]:
        """The local task's scratch folders left on this machine, and the processes running in each."""
        if not self.dag["local"]:
            return {}
        found = {}
        for marker in Path(tempfile.gettempdir()).glob("airflow-infra-*/.call.json"):
            try:
                folder = json.loads(marker.read_text())["folder"]
            except (OSError, ValueError, KeyError):
                continue
            if f"/{self.dag['dag']}/" in folder and f"/{self.dag['local']}/" in folder:
                found[marker.parent] = [pid for pid in _pids() if _cwd(pid) == marker.parent]
        return found

    def running(self) -> bool:
        return (bool(self.containers(status="running")) or not self.dag["docker"]) and bool(self.pods(status="running")) \
            and "RUNNING" in self.jobs().values() and (any(self.local().values()) or not self.dag["local"])

    def wait_running(self) -> None:
        deadline = time.monotonic() + 240
        while not self.running():
            assert time.monotonic() < deadline, f"the calls did not start:\n{self.deployment.log_tail()}"
            time.sleep(1)

    def check_one_each_and_nothing_left(self, run_id: str) -> None:
        until = int(time.time())
        created = list(self.engine.events(since=self.since, until=until, decode=True, filters={"event": "create", "label": "airflow-infra.fake-kube"}))
        pods = [e for e in created if e["Actor"]["Attributes"].get("airflow-infra.fake-kube", "").startswith(self.dag["pod"])]
        assert len(pods) == 1, pods
        assert len(self.jobs()) == 1, self.jobs()
        if self.dag["local"]:
            assert len(self.local_starts(run_id)) == 1, self.local_starts(run_id)
        if self.dag["docker"]:
            containers = self.engine.events(since=self.since, until=until, decode=True,
                                            filters={"event": "create", "label": f"org.airflow-infra.dag={self.dag['dag']}"})
            assert len(list(containers)) == 1
        # Orphans: no container or pod of the run's, no job still active, no local call's
        # process or scratch folder, no runtime server left without its worker.
        assert self.containers() == [] and self.pods() == []
        assert self.jobs(ACTIVE) == {}
        assert self.local() == {}
        assert [pid for pid in _runtime_servers() if pid not in self.servers_before and _alive(pid)] == []

    def local_starts(self, run_id: str) -> set[str]:
        """The local call's starts, from the line each prints first, over all the task's tries."""
        task, path = self.dag["local"], _path(self.dag["dag"], run_id)
        tries = self.deployment.get(f"{path}/{task}/tries").json()["task_instances"]
        return {m for t in tries for m in re.findall(r"call started: pid \d+", _log(self.deployment, self.dag["dag"], run_id, task, t["try_number"]))}


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _runtime_servers() -> list[int]:
    """The local target's warm runtime servers on this machine (each serves one worker process)."""
    found = []
    for pid in _pids():
        try:
            if b"--serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def _tasks(dag: dict[str, str | None]) -> list[str]:
    return [dag[k] for k in ("local", "docker", "batch", "k8s") if dag[k]]


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


def _path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"


def _log(deployment, dag_id: str, run_id: str, task: str, try_number: int) -> str:
    answer = deployment.get(f"{_path(dag_id, run_id)}/{task}/logs/{try_number}", params={"full_content": "true"})
    assert answer.status_code == 200, answer.text
    return "\n".join(str(e.get("event", e)) if isinstance(e, dict) else str(e) for e in answer.json()["content"])


def _check_results(moto_s3: str, dag_id: str, run_id: str, tasks: list[str], fault: float, seconds: int) -> None:
    """Results lost: none. Each came from the call started around the fault (its container
    may have been running for a moment before the function's first line), not from one
    started later: a later try starts at least the heartbeat timeout (20 s) after it."""
    results = Client(moto_s3).run(dag_id, run_id)
    for task in tasks:
        value = results[task].result
        assert value["slept"] == seconds and value["started"] < fault + 10, (task, value)


def _restart(deployment, component: str) -> None:
    """kill -9 a component's whole session (it runs in one of its own), then dev/prod-up.sh,
    which starts again what is not running."""
    pid = int((deployment.state / "pids" / f"{component}.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    up = subprocess.run(["bash", str(REPO / "dev" / "prod-up.sh")], env=deployment.env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]


def test_a_killed_worker_s_calls_are_reattached_not_run_again(production_airflow, batch_queue, moto_s3):
    deployment, tasks = production_airflow, _tasks(BLOCKING)
    calls = Calls(deployment, batch_queue, BLOCKING)
    run_id = deployment.trigger(BLOCKING["dag"], {"seconds": SECONDS["worker"]})
    calls.wait_running()
    tis = {ti["task_id"]: ti for ti in deployment.get(_path(BLOCKING["dag"], run_id)).json()["task_instances"]}
    assert all(tis[t]["state"] == "running" and tis[t]["try_number"] == 1 for t in tasks), tis
    killed_at = time.time()
    victims = [pid for task in tasks for pid in _task_processes(tis[task]["id"])]
    assert len(victims) == 2 * len(tasks), f"expected each task's process and its supervisor, found {victims}"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    states = deployment.wait(BLOCKING["dag"], run_id)
    assert states["run"] == "success", (states, deployment.log_tail())
    for task in tasks:
        tries = deployment.get(f"{_path(BLOCKING['dag'], run_id)}/{task}/tries").json()["task_instances"]
        # False successes: none. Try 1, whose worker died, did not succeed; try 2 did.
        assert [t["try_number"] for t in tries] == [1, 2] and tries[0]["state"] != "success" and tries[1]["state"] == "success", (task, tries)
        log = _log(deployment, BLOCKING["dag"], run_id, task, 2)
        assert "try 1's call" in log and "still runs after its worker was lost: reattaching to it" in log, log[-3000:]
    _check_results(moto_s3, BLOCKING["dag"], run_id, tasks, killed_at, SECONDS["worker"])
    calls.check_one_each_and_nothing_left(run_id)
    assert not [pid for pid in victims if _alive(pid)]


def test_a_scheduler_restarted_mid_run_leaves_each_call_running_once(production_airflow, batch_queue, moto_s3):
    deployment, tasks = production_airflow, _tasks(BLOCKING)
    calls = Calls(deployment, batch_queue, BLOCKING)
    run_id = deployment.trigger(BLOCKING["dag"], {"seconds": SECONDS["restart"]})
    calls.wait_running()
    restarted_at = time.time()
    _restart(deployment, "scheduler")
    states = deployment.wait(BLOCKING["dag"], run_id)
    assert states["run"] == "success", (states, deployment.log_tail())
    for task in tasks:  # the workers kept running them: one try each
        tries = deployment.get(f"{_path(BLOCKING['dag'], run_id)}/{task}/tries").json()["task_instances"]
        assert [(t["try_number"], t["state"]) for t in tries] == [(1, "success")], (task, tries)
    _check_results(moto_s3, BLOCKING["dag"], run_id, tasks, restarted_at, SECONDS["restart"])
    calls.check_one_each_and_nothing_left(run_id)


def test_a_triggerer_restarted_while_calls_are_deferred_picks_them_up_again(production_airflow, batch_queue, moto_s3):
    deployment, tasks = production_airflow, _tasks(DEFERRED)
    calls = Calls(deployment, batch_queue, DEFERRED)
    run_id = deployment.trigger(DEFERRED["dag"], {"seconds": SECONDS["restart"]})
    calls.wait_running()
    deadline = time.monotonic() + 120
    while {ti["task_id"]: ti["state"] for ti in deployment.get(_path(DEFERRED["dag"], run_id)).json()["task_instances"]} != dict.fromkeys(tasks, "deferred"):
        assert time.monotonic() < deadline, deployment.log_tail()
        time.sleep(0.5)
    restarted_at = time.time()
    _restart(deployment, "triggerer")
    states = deployment.wait(DEFERRED["dag"], run_id)
    assert states["run"] == "success", (states, deployment.log_tail())
    for task in tasks:
        tries = deployment.get(f"{_path(DEFERRED['dag'], run_id)}/{task}/tries").json()["task_instances"]
        assert [(t["try_number"], t["state"]) for t in tries] == [(1, "success")], (task, tries)
    _check_results(moto_s3, DEFERRED["dag"], run_id, tasks, restarted_at, SECONDS["restart"])
    calls.check_one_each_and_nothing_left(run_id)


def test_a_worker_shutting_down_leaves_its_calls_to_the_next_try(production_airflow, batch_queue, moto_s3):
    """SIGTERM to each task's supervisor, as a worker pod's eviction or a Celery worker's cold
    shutdown delivers it: Airflow still runs the tasks, so each try leaves its call running
    and fails at once (no wait for a heartbeat timeout), and the next try reattaches."""
    deployment, tasks = production_airflow, _tasks(BLOCKING)
    calls = Calls(deployment, batch_queue, BLOCKING)
    run_id = deployment.trigger(BLOCKING["dag"], {"seconds": SECONDS["restart"] + 15})
    calls.wait_running()
    tis = {ti["task_id"]: ti for ti in deployment.get(_path(BLOCKING["dag"], run_id)).json()["task_instances"]}
    stopped_at = time.time()
    for task in tasks:
        task_process, supervisor = _task_processes(tis[task]["id"])
        os.kill(supervisor, signal.SIGTERM)

    states = deployment.wait(BLOCKING["dag"], run_id)
    assert states["run"] == "success", (states, deployment.log_tail())
    for task in tasks:
        tries = deployment.get(f"{_path(BLOCKING['dag'], run_id)}/{task}/tries").json()["task_instances"]
        assert [t["try_number"] for t in tries] == [1, 2] and tries[0]["state"] != "success" and tries[1]["state"] == "success", (task, tries)
        first, second = (_log(deployment, BLOCKING["dag"], run_id, task, n) for n in (1, 2))
        assert "the worker is shutting down while Airflow still runs this task" in first, first[-3000:]
        assert "still runs after its worker was lost: reattaching to it" in second, second[-3000:]
    _check_results(moto_s3, BLOCKING["dag"], run_id, tasks, stopped_at, SECONDS["restart"] + 15)
    calls.check_one_each_and_nothing_left(run_id)


def test_a_task_marked_failed_mid_call_has_its_call_stopped(production_airflow, batch_queue, moto_s3):
    """The other SIGTERM: the task was stopped (here marked failed through the REST API, and
    its supervisor told so at its next heartbeat). Its call is stopped on every target, and
    no try follows."""
    deployment, tasks = production_airflow, _tasks(BLOCKING)
    calls = Calls(deployment, batch_queue, BLOCKING)
    run_id = deployment.trigger(BLOCKING["dag"], {"seconds": SECONDS["worker"]})
    calls.wait_running()
    marked_at = time.monotonic()
    with deployment.client(deployment.token) as client:
        for task in tasks:
            answer = client.patch(f"{_path(BLOCKING['dag'], run_id)}/{task}", json={"new_state": "failed"})
            assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 90
    while calls.containers() or calls.pods() or calls.jobs(ACTIVE) or any(calls.local().values()):
        assert time.monotonic() < deadline, (calls.containers(), calls.pods(), calls.jobs(ACTIVE), calls.local())
        time.sleep(1)
    stopped_within = time.monotonic() - marked_at
    assert stopped_within < SECONDS["worker"] - 10  # stopped, not run to their end
    states = deployment.wait(BLOCKING["dag"], run_id)
    assert states["run"] == "failed", states
    for task in tasks:
        tries = deployment.get(f"{_path(BLOCKING['dag'], run_id)}/{task}/tries").json()["task_instances"]
        assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed")], (task, tries)
        assert "left running" not in _log(deployment, BLOCKING["dag"], run_id, task, 1)
    calls.check_one_each_and_nothing_left(run_id)


def test_deferred_calls_log_into_the_task_log_while_they_run(production_airflow, batch_queue, moto_s3):
    """While a task is deferred, its call's output reaches the task log as it is written:
    the pod's through the pod operator's logging_interval (5 s here), the Batch job's through
    the triggerer (airflow_infra/targets/batch/trigger.py), not only once the call has ended."""
    deployment, tasks = production_airflow, _tasks(DEFERRED)
    calls = Calls(deployment, batch_queue, DEFERRED)
    run_id = deployment.trigger(DEFERRED["dag"], {"seconds": SECONDS["restart"]})
    calls.wait_running()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(seen) < len(tasks):
        assert time.monotonic() < deadline, f"no call output in the task log while deferred: {seen}"
        states = {ti["task_id"]: ti["state"] for ti in deployment.get(_path(DEFERRED["dag"], run_id)).json()["task_instances"]}
        for task in tasks:
            if task not in seen and states[task] == "deferred" and "tick 2" in _log(deployment, DEFERRED["dag"], run_id, task, 1):
                seen[task] = time.monotonic()
        time.sleep(1)
    assert all(state == "deferred" for task, state in states.items() if task in tasks), states  # still running then
    states = deployment.wait(DEFERRED["dag"], run_id)
    assert states["run"] == "success", (states, deployment.log_tail())
    for task in tasks:  # each line once: what the trigger passed on is not fetched again at the end
        log = _log(deployment, DEFERRED["dag"], run_id, task, 1)
        assert log.count("tick 3") == 1, log[-3000:]
    calls.check_one_each_and_nothing_left(run_id)
