"""Automatic requests (pipeline/autosize.py) on a real store, without running calls: sizes
from history and their bounds, the first-run defaults, the records a call leaves, hostile
records, and the parse-time rules. The real runs are in tests/test_autosize_runs.py."""

from __future__ import annotations

import json
import logging

import pytest
from airflow.sdk import DAG

from airflow_infra import infra_task
from airflow_infra.artifacts import AUTOSIZE_DIR, ArtifactStore
from airflow_infra.client import Client
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraSpecError
from airflow_infra.operator import InfraOperator
from airflow_infra.pipeline import autosize
from airflow_infra.pipeline.plan import plan_call

MI = 1 << 20
GI = 1 << 30
LOG = logging.getLogger("test_autosize")


def policy(**values):
    return InfraConfig.model_validate({"autosize": values}).autosize


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/store")


def finished(store, run_id, peak, cpu_seconds=1.0, wall=2.0, map_index=-1, task_id="t", ok=True, cache_hit=None):
    """What the operator does after a call of an automatic task ends."""
    meta = {"dag_id": "d", "task_id": task_id, "run_id": run_id, "map_index": map_index, "try_number": 1,
            "resources": {"memory": GI, "cpu": 2.0}, "autosized": {"memory": {}}}
    outcome = {"ok": ok, "metrics": {"peak_memory_bytes": peak, "cpu_seconds": cpu_seconds, "wall_seconds": wall}}
    if cache_hit:
        outcome["cache_hit"] = cache_hit
    autosize.record(store, meta, outcome, LOG)


def resolve(store, declared, **values):
    return autosize.resolve(declared, policy(**values), store, "d", "t", "this-run", LOG)


def test_without_history_the_declared_default_then_infra_yaml_s(store):
    declared, sized = resolve(store, {"memory": "auto:4Gi", "cpu": "auto", "packages": ["six"]}, cpu={"default": 2})
    assert declared == {"memory": 4 * GI, "cpu": 2.0, "packages": ["six"]}
    assert sized["memory"].source == sized["cpu"].source == "default"
    assert resolve(store, {"memory": "auto"})[0]["memory"] == GI  # the built-in default
    assert resolve(store, {"memory": "2Gi"}) == ({"memory": "2Gi"}, {})  # nothing automatic: untouched


def test_the_percentile_of_the_last_runs_times_headroom(store, caplog):
    for i, peak in enumerate([100, 120, 110, 300]):  # MiB; the oldest run (100) falls out of the window
        finished(store, f"run{i}", peak * MI, cpu_seconds=3.0, wall=2.0)
    with caplog.at_level(logging.INFO, logger="test_autosize"):
        declared, sized = resolve(store, {"memory": "auto:8Gi", "cpu": "auto"}, runs=3, percentile=50, headroom=1.5)
    memory = sized["memory"]
    assert memory.source == "history" and memory.runs == ("run3", "run2", "run1") and memory.calls == 3
    assert memory.used == 120 * MI and declared["memory"] == 180 * MI  # p50 of 300, 110, 120 = 120; x1.5
    assert declared["cpu"] == 2.25  # 1.5 cores x 1.5
    said = caplog.text
    assert "memory='auto': 180Mi from the p50 peak 120Mi of 3 call(s) in the last 3 run(s) (run3, run2, run1) x1.5 headroom" in said
    assert resolve(store, {"memory": "auto"}, percentile=100)[0]["memory"] == 375 * MI  # the highest, x1.25


def test_bounds_and_shm_decide_where_history_would_go_beyond_them(store):
    finished(store, "r", 10 * MI, cpu_seconds=0.01, wall=10.0)
    declared, sized = resolve(store, {"memory": "auto", "cpu": "auto"}, memory={"min": "256Mi"}, cpu={"min": 0.5})
    assert declared["memory"] == 256 * MI and sized["memory"].bound == "min"
    assert declared["cpu"] == 0.5 and sized["cpu"].bound == "min"
    finished(store, "r2", 100 * GI)
    declared, sized = resolve(store, {"memory": "auto"}, memory={"max": "8Gi"})
    assert declared["memory"] == 8 * GI and sized["memory"].bound == "max" and "capped at the maximum 8Gi" in sized["memory"].detail
    declared, sized = resolve(store, {"memory": "auto", "shm": "16Gi"}, memory={"max": "8Gi"})
    assert declared["memory"] == 16 * GI and sized["memory"].bound == "shm"  # shared memory counts against the limit


def test_a_mapped_task_pools_its_indexes_and_tasks_keep_apart(store):
    for index, peak in enumerate([50, 400, 60]):
        finished(store, "r", peak * MI, map_index=index)
    finished(store, "r", 5 * GI, task_id="other")
    declared, sized = resolve(store, {"memory": "auto"}, percentile=100, headroom=1.0)
    assert declared["memory"] == 400 * MI and sized["memory"].calls == 3 and sized["memory"].runs == ("r",)
    # The indexes of this run that finished first do not change the size of the others.
    finished(store, "this-run", 2 * GI, map_index=0)
    assert resolve(store, {"memory": "auto"}, percentile=100, headroom=1.0)[0]["memory"] == 400 * MI


def test_only_successful_calls_that_ran_leave_a_record(store):
    finished(store, "failed", 10 * GI, ok=False)
    finished(store, "served", 10 * GI, cache_hit={"run_id": "x"})
    autosize.record(store, {"dag_id": "d", "task_id": "t", "resources": {}}, {"ok": True}, LOG)  # not automatic
    assert autosize.history(store, "d", "t", 5, LOG) == []
    finished(store, "ran", 10 * MI, cpu_seconds=float("nan"))
    [entry] = autosize.history(store, "d", "t", 5, LOG)
    assert entry["peak_memory_bytes"] == 10 * MI and entry["cores"] is None  # a NaN measure is no measure


HOSTILE = [
    b"not json",
    b"[]",
    json.dumps({"run_id": "x"}).encode(),  # keys missing
    json.dumps({"run_id": 1, "map_index": -1, "try_number": 1, "peak_memory_bytes": 1, "cores": 1, "wall_seconds": 1, "requested": {}, "finished_at": ""}).encode(),
    json.dumps({"run_id": "x", "map_index": -1, "try_number": 1, "peak_memory_bytes": -5, "cores": 1, "wall_seconds": 1, "requested": {}, "finished_at": ""}).encode(),
    json.dumps({"run_id": "x", "map_index": -1, "try_number": 1, "peak_memory_bytes": 1e300, "cores": 1, "wall_seconds": 1, "requested": {}, "finished_at": ""}).encode(),
    json.dumps({"run_id": "x", "map_index": -1, "try_number": 1, "peak_memory_bytes": True, "cores": 1, "wall_seconds": 1, "requested": {}, "finished_at": ""}).encode(),
    json.dumps({"run_id": "x", "map_index": -1, "try_number": 1, "peak_memory_bytes": 1, "cores": "1", "wall_seconds": 1, "requested": {}, "finished_at": ""}).encode(),
    json.dumps({"run_id": "x", "map_index": -1, "try_number": 1, "peak_memory_bytes": 1, "cores": 1, "wall_seconds": 1, "requested": {}, "finished_at": "", "extra": 1}).encode(),
    b'{"run_id": "x", "run_id": "y"}',
]


@pytest.mark.parametrize("content", HOSTILE)
def test_a_record_that_is_not_ours_is_skipped_and_named(store, content, caplog):
    finished(store, "good", 100 * MI)
    folder = store.root / AUTOSIZE_DIR / "d" / "t"
    (folder / "9999999999999-1--1-planted.json").write_bytes(content)  # sorts as the newest
    with caplog.at_level(logging.WARNING, logger="test_autosize"):
        declared, sized = resolve(store, {"memory": "auto"}, percentile=100, headroom=1.0)
    assert declared["memory"] == 100 * MI and sized["memory"].runs == ("good",)
    assert "autosize: skipping" in caplog.text and "9999999999999-1--1-planted.json" in caplog.text


def test_old_records_are_pruned_beyond_what_any_window_reads(store, monkeypatch):
    monkeypatch.setattr(autosize, "_KEEP", 3)
    for i in range(5):
        finished(store, f"run{i}", (100 + i) * MI)
    resolve(store, {"memory": "auto"})
    kept = sorted(p.name for p in (store.root / AUTOSIZE_DIR / "d" / "t").iterdir())
    assert len(kept) == 3 and all("run0" not in k and "run1" not in k for k in kept)


def test_records_are_kept_apart_from_the_runs_the_client_lists(store):
    finished(store, "r", 100 * MI)
    assert (store.root / AUTOSIZE_DIR).exists()
    assert Client(store.url).dags() == []


def test_routing_sees_the_size(store):
    finished(store, "r", 3 * GI)
    config = InfraConfig.model_validate({"targets": {"big": {"kind": "local"}}, "rules": [{"when": "memory > 2Gi", "target": "big"}, {"target": "local"}]})
    declared, _ = autosize.resolve({"memory": "auto:1Gi"}, config.autosize, store, "d", "t", "r2", LOG)
    assert plan_call(declared, "auto", config, dag_id="d", task_id="t", dag_file=None).route.target == "big"
    # At parse time (the CLI's plan, the plugin) the first-run default stands in for it.
    assert plan_call({"memory": "auto:1Gi"}, "auto", config, dag_id="d", task_id="t", dag_file=None, skip_templated=True).route.target == "local"


@pytest.mark.parametrize("value", ["auto", "auto:4Gi", "auto:512Mi", "{{ params.memory }}"])
def test_automatic_memory_is_accepted_at_parse_time(value):
    with DAG("autosize_ok", schedule=None):
        infra_task(memory=value, cpu="auto:0.5", on_oom="double", retries=1)(lambda: 1).override(task_id="t")()


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("memory", "auto:lots", "memory='auto:lots'"),
        ("memory", "auto:4Gi\n", "memory='auto:4Gi\\n'"),
        ("memory", "Auto", "memory='Auto'"),
        ("memory", "auto:", "memory='auto:'"),
        ("memory", "auto:1", "memory='auto:1'"),  # a 1-byte default is refused like memory=1
        ("cpu", "auto:0", "cpu='auto:0'"),
        ("cpu", "auto:1e9", "cpu='auto:1e9'"),
        ("disk", "auto", "disk='auto'"),  # only memory and cpu size themselves
        ("timeout", "auto", "timeout='auto'"),
    ],
)
def test_bad_automatic_requests_are_refused_at_parse_time_naming_dag_task_and_field(field, value, said):
    with DAG("autosize_bad", schedule=None):
        with pytest.raises(InfraSpecError) as caught:
            infra_task(**{field: value})(lambda: 1).override(task_id="sized")()
    assert "DAG 'autosize_bad', task 'sized'" in str(caught.value) and said in str(caught.value)


def test_the_classic_operator_and_expand_get_the_same_checks():
    with DAG("autosize_classic", schedule=None):
        InfraOperator(task_id="ok", python_callable=lambda: 1, memory="auto:2Gi")
        with pytest.raises(InfraSpecError, match="memory='auto:big'"):
            InfraOperator(task_id="bad", python_callable=lambda: 1, memory="auto:big")
        with pytest.raises(InfraSpecError, match="memory='auto:big'"):
            InfraOperator.partial(task_id="mapped", python_callable=lambda x: x, memory="auto:big").expand(op_args=[[1]])


@pytest.mark.parametrize(
    "section",
    [
        {"memory": {"min": "8Gi", "max": "1Gi"}},
        {"memory": {"maximum": "1Gi"}},
        {"memory": "4Gi"},
        {"memory": {"default": "lots"}},
        {"cpu": {"default": True}},
        {"cpu": {"max": 1e9}},
        {"percentile": 101},
        {"percentile": 10},
        {"headroom": 0.5},
        {"runs": 0},
        {"runs": 1000},
        {"window": 3},
    ],
)
def test_bad_autosize_sections_are_refused(section):
    with pytest.raises(ValueError, match="autosize"):
        InfraConfig.model_validate({"autosize": section})
