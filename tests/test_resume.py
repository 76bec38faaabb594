"""Resume: fix a failed middle task, clear it, re-run it; upstream results come from the store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airflow_infra.client import Client

pytestmark = pytest.mark.integration


def airflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=600, env=os.environ)


def test_cleared_task_reruns_alone_from_upstream_artifacts(dags, tmp_path):
    first = dags.test("infra_resume", conf={"work": str(tmp_path)})
    assert not first.succeeded and "RuntimeError: not fixed yet" in first.output
    log = tmp_path / "executions.log"
    assert log.read_text().split() == ["load", "transform"]

    (tmp_path / "fixed").touch()  # the fix
    cleared = airflow("tasks", "clear", "infra_resume", "-t", "^transform$", "--downstream", "--yes")
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    # Run what was cleared, in the same DAG run, as the scheduler would.
    for task_id in ("transform", "report"):
        done = airflow("tasks", "test", "infra_resume", task_id, first.run_id)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    assert log.read_text().split() == ["load", "transform", "transform"]  # load did not run again
    run = Client(f"file://{dags.home}/infra/artifacts").run("infra_resume", first.run_id)
    tries = run["transform"].tries()
    assert [t.ok for t in tries] == [False, True]  # the failed attempt is kept, not overwritten
    assert "not fixed yet" in tries[0].error["message"]
    assert run["load"].tries() and len(run["load"].tries()) == 1
    assert run["report"].result == "total=6"
