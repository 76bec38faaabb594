"""Automatic requests across runs (pipeline/autosize.py), with the real `airflow dags test`
on the local target, whose cgroups enforce the sized memory: two runs of one DAG."""

from __future__ import annotations

import pytest

from airflow_infra.artifacts import AUTOSIZE_DIR
from tests.dagrun import bigmem_rules

pytestmark = pytest.mark.integration

MI = 1 << 20
AUTOSIZE_YAML = bigmem_rules("600Mi") + "autosize: {headroom: 1.5, memory: {min: 32Mi}}\n"


def test_a_second_run_asks_for_what_the_first_used(dags, infra_yaml):
    infra_yaml(AUTOSIZE_YAML)
    first = dags.test("infra_autosize")
    assert first.succeeded, first.output[-4000:]
    grow = first.call("grow")
    assert grow["autosized"]["memory"]["source"] == "default" and grow["resources"]["memory"] == 1024 * MI
    assert grow["resources"]["cpu"] == 2 and grow["target"] == "bigmem"  # 1Gi routes to bigmem
    assert "memory='auto': 1Gi (the declared first-run default: no successful run recorded yet)" in first.output
    tight = first.call("tight")  # 48Mi was too little: one escalation
    assert tight["try_number"] == 2 and tight["escalated"]["from"] == "48Mi" and tight["escalated"]["to"] == "96Mi"
    records = list((first.artifacts / AUTOSIZE_DIR / "infra_autosize").glob("*/*.json"))
    assert sorted(p.parent.name for p in records) == ["grow", "shards", "shards", "shards", "tight"]  # no record of the OOM-killed try

    second = dags.test("infra_autosize")
    assert second.succeeded, second.output[-4000:]
    grow_peak = first.outcome("grow")["metrics"]["peak_memory_bytes"]
    grow = second.call("grow")
    sized = grow["autosized"]["memory"]
    assert sized["source"] == "history" and sized["runs"] == [first.run_id] and sized["calls"] == 1
    assert grow_peak < grow["resources"]["memory"] <= 2 * grow_peak  # the peak x1.5, rounded up to a MiB
    assert grow["resources"]["cpu"] < 2 and grow["autosized"]["cpu"]["source"] == "history"
    assert grow["target"] == "local"  # routing used the sized request
    assert "memory='auto': " in second.output and "from the p95 peak" in second.output and first.run_id in second.output
    # shards: every index gets the size of the task, from the three indexes of the first run.
    sizes = {second.call("shards", i)["resources"]["memory"] for i in range(3)}
    assert len(sizes) == 1 and second.call("shards", 0)["autosized"]["memory"]["calls"] == 3
    assert sizes.pop() > first.outcome("shards", 2)["metrics"]["peak_memory_bytes"]  # the largest index fits
    # tight: starts from what the escalated try used, and fits at once.
    tight = second.call("tight")
    assert tight["try_number"] == 1 and "escalated" not in tight
    assert tight["resources"]["memory"] > first.outcome("tight")["metrics"]["peak_memory_bytes"]
    # The plugin's runs API shows where each request came from.
    from airflow_infra.plugin.report import runs

    shown = {(c["task_id"], c["map_index"]): c for c in runs("infra_autosize", limit=1)[0]["calls"]}
    assert shown[("grow", -1)]["autosized"]["memory"]["source"] == "history"
