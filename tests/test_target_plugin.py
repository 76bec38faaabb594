"""A third-party target kind, installed as a package with an `airflow_infra.targets` entry
point, runs a DAG under the real `airflow dags test` (deferring and resuming through it)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

RULES = """
targets:
  fake: {kind: fake, defer: true}
rules:
  - {when: "gpu > 0", target: fake}
  - {target: local}
"""


def test_a_dag_runs_on_a_plugged_in_kind(dags, infra_yaml, fake_kind):
    infra_yaml(RULES)
    run = dags.test("infra_fake_kind", env={"PYTHONPATH": str(fake_kind)})
    assert run.succeeded, run.output[-4000:]
    assert run.result("on_fake") == 42 and run.result("on_local") == 43  # and the plain @task checked it
    call = run.call("on_fake")
    assert call["target"] == "fake" and "rule 1 'gpu > 0' matched" in call["routing_reason"]
    assert run.call("on_local")["target"] == "local"
    assert "fake: running on the fake kind" in run.output
    assert "fake kind: resumed call" in run.output  # deferred, then resumed from the stored handle
