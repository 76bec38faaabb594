"""A call's output cannot stall or steer its runner, and Airflow's execution_timeout stops
the whole call at once, on the local and the docker target (the real `airflow dags test`)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

pytestmark = pytest.mark.integration


def _assert_shapes(run) -> None:
    assert run.result("no_newline") == 1 and "50%...100%" in run.output
    assert run.result("long_line") == 2 and "END-OF-LONG-LINE" in run.output
    assert "task 'lookalike': the function raised ValueError: still my own error" in run.output
    assert "AirflowTaskTimeout" in run.output or "Timeout" in run.output
    # Later tasks are unaffected: the timed-out call left nothing for them to read.
    assert run.result("afterwards") == 7
    assert run.outcome("overrun") is None  # it never finished, and nothing claims it did


@pytest.mark.fault
def test_output_shapes_and_execution_timeout_on_the_local_target(dags, tmp_path):
    started = time.monotonic()
    run = dags.test("infra_output_shapes", conf={"pid_dir": str(tmp_path)}, timeout=300)
    assert time.monotonic() - started < 240
    _assert_shapes(run)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    for pid in pids:  # the call and the process it started: both gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.fault
def test_output_shapes_and_execution_timeout_on_the_docker_target(dags, docker_yaml):
    docker_yaml()
    run = dags.test("infra_output_shapes", env={"AIRFLOW_INFRA_TARGET": "docker"}, timeout=600)
    _assert_shapes(run)
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=org.airflow-infra.dag=infra_output_shapes"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert left == []
