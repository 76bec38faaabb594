"""OOM escalation across Airflow tries (pipeline/escalation.py), with the real `airflow dags
test` and the kernel's cgroup OOM killer on the local target: one run holds every case."""

from __future__ import annotations

import json

import pytest

from airflow_infra.artifacts import path_component
from tests.dagrun import bigmem_rules

pytestmark = pytest.mark.integration

ESCALATION_YAML = bigmem_rules("100Mi") + "oom: {max_memory: 128Mi}\n"


def test_an_oom_killed_try_is_retried_with_double_the_memory_up_to_the_cap(dags, infra_yaml):
    infra_yaml(ESCALATION_YAML)
    run = dags.test("infra_oom_escalation")
    out = run.output
    # grows: try 1 killed at 64Mi, try 2 succeeds at 128Mi, routed to bigmem.
    assert run.result("grows") == 90 << 20, out[-4000:]
    call = run.call("grows")
    assert call["try_number"] == 2 and call["resources"]["memory"] == 128 << 20 and call["target"] == "bigmem"
    assert call["escalated"]["from"] == "64Mi" and call["escalated"]["to"] == "128Mi" and call["escalated"]["after_try"] == 1
    assert call["on_oom"]["cap"] == "128Mi" and call["on_oom"]["cap_source"] == "infra.yaml oom.max_memory"
    assert "task 'grows': out of memory: the task hit its memory limit of 64Mi" in out
    assert "on_oom='double': the next try asks for 128Mi (cap 128Mi)" in out
    assert ("memory escalated from 64Mi to 128Mi after try 1's out-of-memory kill (on_oom='double', cap 128Mi); "
            "routed to target 'bigmem' (was 'local')") in out
    # capped: try 2 ran at the cap, was killed again, and the error says escalation stopped there.
    capped = run.call("capped")
    assert capped["try_number"] == 2 and capped["resources"]["memory"] == 128 << 20
    assert ("task 'capped': out of memory: the task hit its memory limit of 128Mi" in out
            and "escalation stopped at the cap of 128Mi (infra.yaml oom.max_memory)" in out), out[-4000:]
    # per_index: each map index reads its own previous try.
    assert run.result("per_index", 0) == 8 << 20 and run.call("per_index", 0)["try_number"] == 1
    assert "escalated" not in run.call("per_index", 0)
    assert run.result("per_index", 1) == 90 << 20
    assert run.call("per_index", 1)["try_number"] == 2 and run.call("per_index", 1)["escalated"]["to"] == "128Mi"
    # The plugin's runs API shows where the request came from.
    from airflow_infra.plugin.report import runs

    shown = {(c["task_id"], c["map_index"]): c for c in runs("infra_oom_escalation", limit=1)[0]["calls"]}
    assert shown[("grows", -1)]["escalated"]["to"] == "128Mi" and shown[("grows", -1)]["requested"]["memory"] == 128 << 20
    assert shown[("per_index", 0)]["escalated"] is None
    # The first try's record, next to its call.json.
    record = json.loads((run.artifacts / "infra_oom_escalation" / path_component(run.run_id) / "grows" / "-1" / "1" / "oom.json").read_text())
    assert record["oom"] is True and record["memory"] == 64 << 20 and "oom_kill=" in record["evidence"]
