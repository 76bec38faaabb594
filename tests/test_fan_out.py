"""Fan-out (airflow_infra/pipeline/fanout.py) under `airflow dags test`: one task instance
runs a function over a run-time list in chunks, in a pool of processes forked from the warm
runtime (local) or inside one container (docker), and a downstream task gets the results
as a lazy sequence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from airflow_infra.client import Client
from tests.conftest import HOME

pytestmark = pytest.mark.integration


def _store() -> str:
    return f"file://{HOME / 'infra' / 'artifacts'}"


def _total(run) -> dict:
    return Client(_store()).run("infra_fan_out", run.run_id)["total"].result


def test_a_fan_out_runs_every_item_in_one_task_instance_and_hands_on_a_lazy_sequence(dags):
    run = dags.test("infra_fan_out", conf={"n": 100, "fail": []})
    assert run.succeeded, run.output[-5000:]
    total = _total(run)
    assert total == {"n": 100, "sum": 2 * sum(x * x for x in range(100)), "type": "FanOutResults", "failed": [],
                     "last": 2 * 99 * 99, "slice": [2, 8, 18]}
    assert "fan-out over 100 items of 'x': 100 to run in 15 chunks of up to 7" in run.output
    assert "fan-out: 100/100 items done, 0 failed, 0 running" in run.output
    # One task instance for the hundred items: no mapped instances.
    assert "map_index=0" not in run.output
    # The plugin page's view of it (plugin/report.py): counts and per-item measurements.
    from airflow_infra.plugin.report import runs

    [square] = [c for r in runs("infra_fan_out", limit=1) for c in r["calls"] if c["task_id"] == "square"]
    view = square["fan_out"]
    assert (view["items"], view["ran"], view["reused"], view["failed"], view["failed_items"]) == (100, 100, 0, 0, [])
    assert len(view["measured"]["wall_seconds"]) == 7 and len(view["measured"]["slowest"]) == 5
    assert view["measured"]["peak_memory_bytes"][0] > 1 << 20


def test_failed_items_within_the_tolerance_are_none_and_a_clear_runs_only_them(dags):
    run = dags.test("infra_fan_out", conf={"n": 30, "fail": [3, 11]})
    assert run.succeeded, run.output[-5000:]
    total = _total(run)
    assert total["failed"] == [3, 11] and total["sum"] == 2 * sum(x * x for x in range(30) if x not in (3, 11))
    assert "fan-out over 30 items: 30 ran in this try, 0 had a result from an earlier one, 2 failed" in run.output


def test_more_failures_than_tolerated_fail_the_task_naming_the_first_errors(dags):
    run = dags.test("infra_fan_out", conf={"n": 30, "fail": [1, 2, 20]})
    assert not run.succeeded
    assert "task 'square': 3 of 30 items failed (max_failures=2 tolerates 2); the first errors:" in run.output
    assert "item 1: ValueError: item 1 is bad" in run.output and "item 20: ValueError: item 20 is bad" in run.output


def _airflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=600, env=os.environ)


def test_clearing_a_failed_fan_out_runs_only_the_items_without_a_good_result(dags, tmp_path):
    (tmp_path / "fail.json").write_text("[3, 11, 12]")
    first = dags.test("infra_fan_out", conf={"n": 30, "fail": [], "work": str(tmp_path)})
    assert not first.succeeded and "3 of 30 items failed" in first.output
    assert sorted(map(int, (tmp_path / "ran.log").read_text().split())) == list(range(30))

    (tmp_path / "fail.json").unlink()  # the fix
    (tmp_path / "ran.log").unlink()
    cleared = _airflow("tasks", "clear", "infra_fan_out", "-t", "^square$", "--downstream", "--yes")
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    for task_id in ("square", "total"):
        done = _airflow("tasks", "test", "infra_fan_out", task_id, first.run_id)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        if task_id == "square":
            assert "fan-out over 30 items: 3 ran in this try, 27 had a result from an earlier one, 0 failed" in done.stdout + done.stderr
    assert sorted(map(int, (tmp_path / "ran.log").read_text().split())) == [3, 11, 12]  # only those ran again
    total = _total(first)
    assert total["failed"] == [] and total["sum"] == 2 * sum(x * x for x in range(30)) and total["n"] == 30


def test_on_docker_a_fan_out_runs_its_pool_in_one_container_sized_for_it(dags, docker_yaml):
    import docker

    docker_yaml('rules:\n  - {when: "memory >= 256Mi", target: docker}\n  - {target: local}\n')
    engine = docker.from_env()
    since = int(time.time()) - 1
    run = dags.test("infra_fan_out", conf={"n": 20, "fail": [5]})
    assert run.succeeded, run.output[-5000:]
    total = _total(run)
    assert total["failed"] == [5] and total["sum"] == 2 * sum(x * x for x in range(20) if x != 5)
    assert "fan-out: 20/20 items done" not in run.output and "fan-out: 19/20 items done, 1 failed, 0 running" in run.output
    created = list(engine.events(since=since, until=int(time.time()), decode=True,
                                 filters={"event": "create", "label": "org.airflow-infra.dag=infra_fan_out"}))
    assert len(created) == 1, created  # one container for the twenty items
    # Sized for the pool: parallelism (the worker's cores, at most the chunks) x the declared 256Mi per item.
    at_once = min(len(os.sched_getaffinity(0)), 3)
    assert f"chunks of up to 7, {at_once} at a time" in run.output
    square = Client(_store()).run("infra_fan_out", run.run_id)["square"][-1]
    assert square.meta["resources"]["memory"] == at_once * (256 << 20) and square.meta["target"] == "docker"


ON_BATCH = 'rules:\n  - {when: "memory >= 256Mi", target: gpu}\n  - {target: local}\n'  # square on Batch, the rest local


@pytest.mark.parametrize("deferrable", [False, True], ids=["blocking", "deferred"])
def test_on_batch_a_fan_out_is_one_array_job_whose_children_find_their_index(dags, docker_yaml, moto_s3, batch_queue, deferrable):
    import boto3

    from tests.conftest import MOTO
    from tests.test_batch import write_batch_yaml

    write_batch_yaml(docker_yaml, moto_s3, batch_queue, deferrable=deferrable, rules=ON_BATCH)
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")
    before = {j["jobId"] for s in ("SUCCEEDED", "FAILED") for j in batch.list_jobs(jobQueue=batch_queue, jobStatus=s)["jobSummaryList"]}
    run = dags.test("infra_fan_out", conf={"n": 20, "fail": [5]})
    assert run.succeeded, run.output[-5000:]
    total = Client(moto_s3).run("infra_fan_out", run.run_id)["total"].result
    assert total["failed"] == [5] and total["sum"] == 2 * sum(x * x for x in range(20) if x != 5) and total["n"] == 20
    assert "fan-out over 20 items of 'x': 20 to run in 3 chunks of up to 7" in run.output
    # One array job of three children: the only Batch jobs this run submitted.
    new = [j for s in ("SUCCEEDED", "FAILED") for j in batch.list_jobs(jobQueue=batch_queue, jobStatus=s)["jobSummaryList"]
           if j["jobId"] not in before]
    parents = [j for j in new if ":" not in j["jobId"]]
    assert len(parents) == 1, new
    described = batch.describe_jobs(jobs=[parents[0]["jobId"]])["jobs"][0]
    assert described["arrayProperties"]["size"] == 3 and described["status"] == "SUCCEEDED"
    # Each child ran its own chunk, told which by Batch's variable, not the whole list.
    square = Client(moto_s3).run("infra_fan_out", run.run_id)["square"][-1]
    reports = [square.store.read_json(square.path / f"chunk-{c}.json") for c in range(3)]
    assert [(r["chunk"], r["told"], len(r["items"])) for r in reports] == [
        (0, "AWS_BATCH_JOB_ARRAY_INDEX", 7), (1, "AWS_BATCH_JOB_ARRAY_INDEX", 7), (2, "AWS_BATCH_JOB_ARRAY_INDEX", 6)]


def test_on_kubernetes_a_fan_out_is_one_indexed_job_whose_pods_find_their_index(dags, docker_yaml, moto_s3, fake_kube):
    import requests

    from tests.conftest import FAKE_KUBE_API
    from tests.test_kubernetes import pods_left, write_kube_yaml

    write_kube_yaml(docker_yaml, moto_s3, rules='rules:\n  - {when: "memory >= 256Mi", target: k8s}\n  - {target: local}\n')
    run = dags.test("infra_fan_out", conf={"n": 20, "fail": [5]})
    assert run.succeeded, run.output[-5000:]
    total = Client(moto_s3).run("infra_fan_out", run.run_id)["total"].result
    assert total["failed"] == [5] and total["sum"] == 2 * sum(x * x for x in range(20) if x != 5) and total["n"] == 20
    assert "Indexed Job ml/" in run.output and ": 3 pods, 3 at a time" in run.output
    square = Client(moto_s3).run("infra_fan_out", run.run_id)["square"][-1]
    reports = [square.store.read_json(square.path / f"chunk-{c}.json") for c in range(3)]
    assert [(r["chunk"], r["told"], len(r["items"])) for r in reports] == [
        (0, "JOB_COMPLETION_INDEX", 7), (1, "JOB_COMPLETION_INDEX", 7), (2, "JOB_COMPLETION_INDEX", 6)]
    # The job and its pods are gone once the task has its results.
    assert requests.get(f"{FAKE_KUBE_API}/apis/batch/v1/namespaces/ml/jobs", timeout=10).json()["items"] == []
    deadline = time.monotonic() + 30
    while pods_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pods_left() == []


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.fault
@pytest.mark.parametrize("where", ["local", "batch", "kubernetes"])
def test_killing_a_fan_out_stops_its_pool_array_job_or_indexed_job(dags, docker_yaml, moto_s3, batch_queue, fake_kube, tmp_path, where):
    import signal

    import boto3
    import requests

    from tests.conftest import FAKE_KUBE_API, MOTO
    from tests.test_batch import write_batch_yaml
    from tests.test_kubernetes import pods_left, write_kube_yaml

    work = str(tmp_path) if where == "local" else ""
    if where == "batch":
        write_batch_yaml(docker_yaml, moto_s3, batch_queue, rules=ON_BATCH)
    elif where == "kubernetes":
        write_kube_yaml(docker_yaml, moto_s3, rules='rules:\n  - {when: "memory >= 256Mi", target: k8s}\n  - {target: local}\n')
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")
    active = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")

    def jobs(statuses=active) -> list[str]:
        return [j["jobId"] for s in statuses for j in batch.list_jobs(jobQueue=batch_queue, jobStatus=s)["jobSummaryList"]
                if j["jobName"].startswith("infra_fan_out_sleeper")]

    def k8s_jobs() -> list[str]:
        return [j["metadata"]["name"] for j in requests.get(f"{FAKE_KUBE_API}/apis/batch/v1/namespaces/ml/jobs", timeout=10).json()["items"]]

    def running() -> bool:
        if where == "local":
            return (tmp_path / "pids").is_dir() and len(list((tmp_path / "pids").iterdir())) == 6
        if where == "batch":
            return len(jobs(("RUNNING",))) >= 6
        return len(pods_left()) >= 6

    proc = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", "infra_fan_out_sleeper", "-c",
                             json.dumps({"n": 6, "seconds": 120, "work": work})],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not running():
            assert proc.poll() is None and time.monotonic() < deadline, (proc.stdout.read()[-3000:] if proc.poll() is not None else "no start")
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # what a task process receives when the task is killed
        output, _ = proc.communicate(timeout=120)
        assert "task 'sleeps'" in output
        deadline = time.monotonic() + 60
        while True:
            if where == "local":
                left = [p.name for p in (tmp_path / "pids").iterdir() if _alive(int(p.name))]
            elif where == "batch":
                left = jobs()
            else:
                left = k8s_jobs() + pods_left()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert left == [], f"still running after the kill: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
