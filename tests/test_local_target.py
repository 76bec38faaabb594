"""The local target end to end, through the real `airflow dags test`."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.dagrun import BIGMEM_RULES

pytestmark = pytest.mark.integration


def test_behaviour_dag(dags):
    run = dags.test("infra_behaviour")
    assert run.succeeded, run.output[-4000:]
    produced = run.result("produce")
    # Helpers from the DAG file and from a module next to it travel with the function.
    assert produced["text"] == "<HELLO!>"
    # Declared packages and env vars; none of Airflow's settings leak into the task.
    assert produced["six"] == "1.16.0" and produced["mode"] == "test"
    assert produced["airflow_env"] == []
    assert produced["map_index"] == -1
    assert produced["tuple"] == (1, 2)
    # The function's stdout and stderr are in the task log.
    assert "to stdout: producing" in run.output and "to stderr: still producing" in run.output
    # Conflicting pins of the same package, in one DAG: each task has its own environment.
    assert run.result("split") == {"left": 1, "right": "1.17.0"}
    assert run.result("from_requirements") == "1.16.0"
    call = run.call("produce")
    assert call["target"] == "local" and call["environment"]["packages"] == ["six==1.16.0"]


def test_user_exception_fails_the_task_with_the_users_traceback(dags):
    run = dags.test("infra_failure")
    assert not run.succeeded
    assert "DAG 'infra_failure', task 'explode': the function raised ValueError: boom 42" in run.output
    assert "in explode" in run.output and "in inner" in run.output
    error = run.outcome("explode")["error"]
    assert error["type"] == "ValueError" and "inner()" in error["traceback"]
    assert "infra_behaviour.py" in error["traceback"]
    assert "runtime.py" not in error["traceback"]


def test_timeout_kills_the_task(dags):
    run = dags.test("infra_timeout")
    assert not run.succeeded
    assert "timed out after 2s (timeout=2s)" in run.output


def test_dead_processes_fail_their_task_clearly_and_the_next_task_still_runs(dags):
    run = dags.test("infra_process_deaths")
    assert "task 'kill_own_runtime': the task's runtime process died" in run.output
    assert "task 'killed_by_signal': the task process died (killed by SIGKILL, signal 9) before writing a result" in run.output
    assert "task 'exits_hard': the task process died (exit code 42) before writing a result" in run.output
    assert "out of memory" not in run.output  # nothing here reported an OOM: no guess
    # The calls' processes run this home's environments: none outlives `dags test`.
    leftovers = subprocess.run(["pgrep", "-f", str(dags.home)], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in leftovers if int(pid) != os.getpid()], "a call's process outlived its task"
    assert run.result("afterwards") == 7


def test_routing_by_mapped_resource(dags, infra_yaml):
    infra_yaml(BIGMEM_RULES)
    run = dags.test("infra_mapped_resources")
    assert run.succeeded, run.output[-4000:]
    assert run.call("sized", 0)["target"] == "local"
    big = run.call("sized", 1)
    assert big["target"] == "bigmem" and "memory > 1Gi" in big["routing_reason"]


def test_forcing_variable_overrides_rules(dags, infra_yaml):
    infra_yaml(
        """
targets:
  k8s: {kind: kubernetes, namespace: ml}
rules:
  - {target: k8s}
"""
    )
    blocked = dags.test("infra_mapped_resources")
    assert not blocked.succeeded
    assert "cannot see this worker's files" in blocked.output  # kubernetes needs an object store
    forced = dags.test("infra_mapped_resources", env={"AIRFLOW_INFRA_TARGET": "local"})
    assert forced.succeeded, forced.output[-4000:]
    assert "AIRFLOW_INFRA_TARGET forces" in forced.call("sized", 0)["routing_reason"]


def test_artifacts_on_another_object_store_url(dags, infra_yaml, tmp_path):
    store = tmp_path / "elsewhere"
    infra_yaml(f"artifacts: file://{store}\n")
    run = dags.test("fanout_example", conf={"n_shards": 2})
    assert run.succeeded, run.output[-4000:]
    assert list(store.glob("fanout_example/*/merge/-1/1/outcome.json"))


def test_artifacts_on_a_remote_object_store(dags, infra_yaml):
    # fsspec's in-memory store lives inside the `airflow dags test` process: like S3 it has
    # no local path, so calls and results are staged through a scratch folder both ways.
    infra_yaml("artifacts: memory://bucket/airflow-infra\n")
    run = dags.test("fanout_example", conf={"n_shards": 2})
    assert run.succeeded, run.output[-4000:]
    assert "2 shards, 40 words counted" in run.output
    assert "stays in the store: memory://bucket/airflow-infra/fanout_example/" in run.output
