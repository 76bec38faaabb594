"""Durable calls (airflow_infra/pipeline/durable.py) on their own: what is kept in the task
state store, what a later try makes of it, and hostile values in it. In-process, with the
test-only `fake` kind (tests/fake_kind) and a dict standing in for Airflow's state store
accessor (get/set/delete, as airflow.sdk.execution_time.context.TaskStateStoreAccessor).
The real runs, with a worker killed mid-call, are in tests/test_durable_runs.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.pipeline import durable
from airflow_infra.pipeline.execute import Execution
from airflow_infra.pipeline.package import write_meta
from airflow_infra.targets.contract import GONE, Handle
from tests.test_pipeline import LOG, package

pytestmark = pytest.mark.usefixtures("fake_kind")


class StateStore(dict):
    """The accessor's three methods over a dict."""

    def set(self, key, value, *, retention=None):
        self[key] = value

    def delete(self, key):
        self.pop(key, None)


def _config(tmp_path, **fake) -> InfraConfig:
    return InfraConfig.model_validate({
        "artifacts": f"file://{tmp_path}/store",
        "targets": {"f": {"kind": "fake", **fake}}, "rules": [{"target": "f"}],
    })


def _started(tmp_path, fn, state: StateStore, **fake):
    """Try 1: the call packaged, submitted and waited for, as the operator does, with the
    state store in its context, but never forgotten: as if its worker died right after."""
    cfg = _config(tmp_path, **fake)
    plan, packaged = package(tmp_path, fn, cfg=cfg)
    packaged.call.__dict__["context"] = {"task_state_store": state}  # frozen dataclass: as the operator builds it
    write_meta(packaged)
    execution = Execution(plan.runner(cfg), packaged.call)
    try:
        execution.start()
    except InfraTaskFailed:  # lose_outcome: the call ended without one
        pass
    return cfg, packaged, execution


def test_the_call_is_kept_as_soon_as_it_is_submitted(tmp_path):
    state = StateStore()
    _, packaged, execution = _started(tmp_path, lambda: 1, state)
    kept = state[durable.KEY]
    assert kept["try_number"] == 1 and kept["target"] == "f" and kept["folder"] == packaged.call.folder_uri
    assert Handle.from_json(kept["handle"]).id == execution.handle.id
    earlier = durable.recall({"task_state_store": state}, packaged.call.store, "d", "manual__1", "t", -1, LOG)
    assert earlier == durable.Earlier(1, "f", packaged.call.folder_uri, Handle.from_json(kept["handle"]))


def test_a_try_that_sees_its_call_end_forgets_it_and_one_that_defers_keeps_it(tmp_path):
    from airflow.sdk.exceptions import TaskDeferred

    state = StateStore({durable.KEY: {"x": 1}})
    with durable.until_the_call_ends({"task_state_store": state}):
        pass
    assert state == {}
    state[durable.KEY] = {"x": 1}
    with pytest.raises(KeyboardInterrupt), durable.until_the_call_ends({"task_state_store": state}):
        raise KeyboardInterrupt  # a signal unwinding the task: the call is killed, so forgotten too
    assert state == {}
    state[durable.KEY] = {"x": 1}
    with pytest.raises(TaskDeferred), durable.until_the_call_ends({"task_state_store": state}):
        raise TaskDeferred(trigger=None, method_name="execute_complete")
    assert durable.KEY in state


def test_without_a_state_store_calls_are_not_durable_and_the_log_says_so(tmp_path, caplog):
    from airflow_infra.artifacts import ArtifactStore

    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert durable.recall({}, ArtifactStore(f"file://{tmp_path}"), "d", "r", "t", -1, LOG) is None
    assert "Airflow gives no task state store to this task: if its worker dies, the next try runs the call again" in caplog.text
    durable.remember(SimpleNamespace(context={}), "f", Handle("fake", "f", "1", "x"))  # nothing to keep it in: no error
    durable.forget(None)


def _hostile(store_uri: str, good: dict) -> list:
    base = f"{store_uri}/d/manual__1/t/-1"
    handle = lambda folder: Handle("fake", "f", "1", folder).to_json()  # noqa: E731
    return [
        "a string", 42, [], {}, {**good, "folder": None},
        {**good, "try_number": "1"}, {**good, "target": 3}, {**good, "handle": "{not json"}, {**good, "handle": "{}"},
        {**good, "folder": f"{store_uri}/other_dag/manual__1/t/-1/1", "handle": handle(f"{store_uri}/other_dag/manual__1/t/-1/1")},
        {**good, "folder": f"{base}/1/../../../x", "handle": handle(f"{base}/1/../../../x")},
        {**good, "folder": f"{base}/1/deeper", "handle": handle(f"{base}/1/deeper")},
        {**good, "folder": f"{base}/", "handle": handle(f"{base}/")},
        {**good, "folder": f"{store_uri}/d/manual__1/t/0/1", "handle": handle(f"{store_uri}/d/manual__1/t/0/1")},  # another map index
        {**good, "handle": handle(f"{base}/2")},  # the handle names another folder than the record
    ]


def test_a_state_store_value_that_is_not_ours_is_ignored_with_a_warning(tmp_path, caplog):
    state = StateStore()
    _, packaged, _ = _started(tmp_path, lambda: 1, state)
    good = dict(state[durable.KEY])
    store = packaged.call.store
    root = store.uri(store.root)
    for value in _hostile(root, good):
        state[durable.KEY] = value
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            assert durable.recall({"task_state_store": state}, store, "d", "manual__1", "t", -1, LOG) is None, value
        assert "ignoring the task state store's 'airflow_infra.call': not a call this task started" in caplog.text, value


def _take_over(cfg, state, try_number=2):
    """Try `try_number` of the same task instance, as InfraOperator.execute starts it."""
    from airflow.sdk import DAG

    from airflow_infra.operator import _RUN_AFRESH, InfraOperator
    from airflow_infra.pipeline.package import store_for

    with DAG("d", schedule=None):
        operator = InfraOperator(task_id="t", python_callable=lambda: "never run by the later try")
    context = {"run_id": "manual__1", "ti": SimpleNamespace(map_index=-1, try_number=try_number), "task_state_store": state}
    earlier = durable.recall(context, store_for(cfg), "d", "manual__1", "t", -1, LOG)
    assert earlier is not None
    answer = operator._take_over(cfg, context, earlier)
    return None if answer is _RUN_AFRESH else answer, answer is _RUN_AFRESH


def test_a_call_that_finished_after_its_worker_died_is_used_not_run_again(tmp_path, capsys):
    from airflow_infra_fake_kind import SUBMITTED

    state = StateStore()
    cfg, _, _ = _started(tmp_path, lambda: "the first try's result", state)
    submitted = len(SUBMITTED)
    value, afresh = _take_over(cfg, state)
    assert (value, afresh) == ("the first try's result", False)
    assert len(SUBMITTED) == submitted  # nothing submitted again
    said = capsys.readouterr().out
    assert "try 1's call (fake " in said and "finished after its worker was lost: using its result" in said
    assert durable.KEY not in state  # seen to its end: a clear, or a later try, runs afresh


def test_a_call_gone_without_a_result_runs_again(tmp_path, capsys):
    state = StateStore()
    cfg, _, _ = _started(tmp_path, lambda: 1, state, lose_outcome=True)
    value, afresh = _take_over(cfg, state)
    assert afresh and durable.KEY not in state
    said = capsys.readouterr().out
    assert "try 1's call (fake " in said and "is gone without a result after its worker was lost: running it again" in said


def test_a_call_that_failed_is_run_again_not_reused(tmp_path):
    def fails():
        raise ValueError("try 1 failed")

    state = StateStore()
    cfg, _, _ = _started(tmp_path, fails, state)
    assert _take_over(cfg, state)[1] is True


def test_the_local_kinds_calls_die_with_their_worker_so_it_never_reattaches(tmp_path):
    from airflow_infra.targets import runner_for

    local = runner_for("local", InfraConfig())
    assert local.status(None, Handle("local", "local", "123", "x")) == GONE
