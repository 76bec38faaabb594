"""Run a DAG with the real `airflow dags test` and read what its tasks left in the artifact store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_infra.client import Call, Client

REPO = Path(__file__).resolve().parents[1]


def bigmem_rules(threshold: str) -> str:
    """Two local targets, so routing decisions show without any remote backend: tasks that
    ask for more than `threshold` of memory go to 'bigmem'."""
    return f"""
targets:
  bigmem: {{kind: local}}
rules:
  - {{when: "memory > {threshold}", target: bigmem}}
  - {{target: local}}
"""


BIGMEM_RULES = bigmem_rules("1Gi")

_RUN_ID = re.compile(r"run_id=(\S+?),")


@dataclass
class DagRun:
    dag_id: str
    returncode: int
    output: str
    run_id: str | None
    artifacts: Path

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and "state=success" in self.output

    def _call(self, task_id: str, map_index: int) -> Call:
        return Client(f"file://{self.artifacts}").run(self.dag_id, self.run_id or "")[task_id][map_index]

    def outcome(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self._call(task_id, map_index).outcome

    def call(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self._call(task_id, map_index).meta

    def links(self, task_id: str, map_index: int = -1) -> dict[str, str]:
        """The task instance's extra links as Airflow stored them when it finished (non-empty ones)."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == self.dag_id, XComModel.run_id == self.run_id,
                    XComModel.task_id == task_id, XComModel.map_index == map_index, XComModel.key.like("_link_%"),
                )
            ).all()
            values = {row.key.removeprefix("_link_"): XComModel.deserialize_value(row) for row in rows}
        return {name: url for name, url in values.items() if url}

    def result(self, task_id: str, map_index: int = -1) -> Any:
        """The task's return value, loaded from the store (a dict when it had multiple outputs)."""
        return self._call(task_id, map_index).result


class DagRunner:
    def __init__(self, home: Path):
        self.home = home

    def test(self, dag_id: str, conf: dict | None = None, env: dict[str, str] | None = None, timeout: int = 600) -> DagRun:
        cmd = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
        if conf is not None:
            cmd += ["-c", json.dumps(conf)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
        output = proc.stdout + proc.stderr
        finished = [line for line in output.splitlines() if "DagRun Finished" in line]
        match = _RUN_ID.search(finished[-1]) if finished else None
        return DagRun(dag_id, proc.returncode, output, match.group(1) if match else None, self.home / "infra" / "artifacts")


def check_remote_escalation(run: DagRun, store: str, target: str, evidence: str) -> None:
    """What tests/dags/infra_oom_remote.py leaves when `target` (a remote one, artifacts in
    `store`) killed try 1 for memory and on_oom escalated try 2 to 128Mi; `evidence` is how
    the platform said it."""
    assert run.succeeded, run.output[-5000:]
    grows = Client(store).run("infra_oom_remote", run.run_id or "")["grows"][-1]
    assert grows.result == 70 << 20
    call = grows.meta
    assert call["try_number"] == 2 and call["target"] == target and call["resources"]["memory"] == 128 << 20
    assert call["escalated"]["from"] == "64Mi" and call["escalated"]["to"] == "128Mi"
    assert evidence in run.output
    assert "task 'grows': out of memory: the task hit its memory limit of 64Mi" in run.output
    assert "memory escalated from 64Mi to 128Mi after try 1's out-of-memory kill" in run.output
