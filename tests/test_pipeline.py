"""The call pipeline on its own, with a test-only target kind registered through its entry
point (tests/fake_kind): no `airflow dags test`, no Docker. Seconds, not minutes."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from airflow_infra.artifacts import HANDLE_FILE, ArtifactStore
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraConfigError, InfraTaskFailed
from airflow_infra.pipeline import cache
from airflow_infra.pipeline.decode import decode, read_outcome
from airflow_infra.pipeline.execute import Execution, load_handle
from airflow_infra.pipeline.package import package_call, reopen_call, write_meta
from airflow_infra.pipeline.plan import plan_call
from airflow_infra.targets import get_kind, kind_names
from airflow_infra.targets.contract import Handle

LOG = logging.getLogger("test_pipeline")
RUN = {"run_id": "manual__1", "map_index": -1, "try_number": 1}


def config(**fake) -> InfraConfig:
    return InfraConfig.model_validate(
        {"targets": {"f": {"kind": "fake", **fake}}, "rules": [{"when": "gpu > 0", "target": "f"}, {"target": "local"}]}
    )


def package(tmp_path, fn, *args, cfg: InfraConfig, declared=None, task_id="t", run_id="manual__1"):
    store = ArtifactStore(f"file://{tmp_path}/store")
    plan = plan_call(declared or {"gpu": 1}, "auto", cfg, dag_id="d", task_id=task_id, dag_file=None)
    packaged = package_call(
        plan, fn, list(args), {}, store=store, config=cfg, run_id=run_id, map_index=-1, try_number=1,
        multiple_outputs=False, dag_file=None, log=LOG, context=None,
    )
    return plan, packaged


def result(execution: Execution, meta: dict):
    store, folder = execution.call.store, execution.outcome_folder
    outcome = read_outcome(store, folder, "here")
    return decode(store, folder, outcome, requested=meta["resources"], multiple_outputs=False, log=LOG, where="here")


def test_a_third_party_kind_registers_through_its_entry_point(fake_kind):
    from airflow_infra_fake_kind import FakeTarget

    assert "fake" in kind_names() and get_kind("fake").schema is FakeTarget
    assert isinstance(config(defer=True).targets["f"], FakeTarget)
    with pytest.raises(ValueError, match="f: defr: Extra inputs"):
        config(defr=True)
    with pytest.raises(InfraConfigError, match="unknown target kind 'fak'; known kinds: batch, docker, fake"):
        get_kind("fak")


def test_routing_and_the_plan(fake_kind):
    cfg = config()
    plan = plan_call({"gpu": 1, "packages": ["six"]}, "auto", cfg, dag_id="d", task_id="t", dag_file=None)
    assert (plan.route.target, plan.kind.name, plan.needs_image) == ("f", "fake", False)
    assert "rule 1 'gpu > 0' matched" in plan.route.reason
    plan = plan_call({}, "auto", cfg, dag_id="d", task_id="t", dag_file=None)
    assert plan.route.target == "local" and "catch-all" in plan.route.reason
    assert plan_call({}, "f", cfg, dag_id="d", task_id="t", dag_file=None).route.reason == "the task pins target='f'"


def test_a_call_runs_and_its_handle_is_stored(fake_kind, tmp_path):
    cfg = config()
    plan, packaged = package(tmp_path, lambda x: x * 7, 6, cfg=cfg)
    write_meta(packaged)
    execution = Execution(plan.runner(cfg), packaged.call)
    assert execution.start() is None
    assert result(execution, packaged.meta) == 42
    stored = load_handle(packaged.call)
    assert stored.kind == "fake" and stored.target == "f" and stored.folder == packaged.call.folder_uri
    assert stored.id == execution.handle.id and stored.details["submitted_by"] == os.getpid()
    assert Handle.from_json(stored.to_json()) == stored


def test_deferral_resumes_from_the_stored_handle(fake_kind, tmp_path):
    cfg = config(defer=True)
    plan, packaged = package(tmp_path, lambda: "deferred and back", cfg=cfg)
    write_meta(packaged)
    deferral = Execution(plan.runner(cfg), packaged.call).start()
    assert deferral is not None and type(deferral.trigger).__name__ == "TimeDeltaTrigger"
    # A new attempt (as Airflow's resume is): nothing but the store to go on.
    call, meta = reopen_call(packaged.call.store, dag_id="d", task_id="t", log=LOG, context=None, **RUN)
    assert call.folder == packaged.call.folder
    resumed = Execution.reopen(plan.runner(cfg), call)
    assert resumed.resume({"status": "success"}) is None
    assert resumed.handle.details["resumed"] is True
    assert result(resumed, meta) == "deferred and back"


def test_a_call_without_an_outcome_is_explained_by_its_kind(fake_kind, tmp_path):
    cfg = config(lose_outcome=True)
    plan, packaged = package(tmp_path, lambda: 1, cfg=cfg)
    with pytest.raises(InfraTaskFailed, match=r"DAG 'd', task 't': fake call \d+ ended with exit code 0 and no outcome"):
        Execution(plan.runner(cfg), packaged.call).start()


def test_the_functions_own_error_is_decoded(fake_kind, tmp_path):
    def explode():
        raise ValueError("boom 42")

    cfg = config()
    plan, packaged = package(tmp_path, explode, cfg=cfg)
    execution = Execution(plan.runner(cfg), packaged.call)
    assert execution.start() is None  # the call ended and said why
    with pytest.raises(InfraTaskFailed, match="the function raised ValueError: boom 42"):
        result(execution, packaged.meta)


def test_a_cache_hit_skips_the_target(fake_kind, tmp_path):
    from airflow_infra_fake_kind import SUBMITTED

    cfg = config()

    def square(x):
        return x * x

    def run_once(run_id: str):
        plan, packaged = package(tmp_path, square, 9, cfg=cfg, run_id=run_id)
        key = cache.key_for(True, packaged.meta, packaged.args, packaged.kwargs, False)
        served = cache.serve(packaged.call.store, packaged.call.folder, packaged.meta, key, LOG)
        if served is not None:
            return served
        write_meta(packaged)
        execution = Execution(plan.runner(cfg), packaged.call)
        execution.start()
        cache.record(packaged.call.store, key, execution.outcome_folder, packaged.meta)
        return result(execution, packaged.meta)

    before = len(SUBMITTED)
    assert run_once("first") == 81
    served = run_once("second")
    assert len(SUBMITTED) == before + 1  # the second run submitted nothing
    assert served["cache_hit"]["run_id"] == "first"


def test_kill_reaches_the_running_call(fake_kind, tmp_path):
    def sleepy():
        import time

        time.sleep(60)

    cfg = config()
    plan, packaged = package(tmp_path, sleepy, cfg=cfg)
    execution = Execution(plan.runner(cfg), packaged.call)
    errors = []
    thread = threading.Thread(target=lambda: _catch(execution.start, errors))
    thread.start()
    deadline = time.monotonic() + 10
    while execution.handle is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(execution.handle.id)
    execution.kill()
    thread.join(10)
    assert not thread.is_alive()
    assert "exit code -9 and no outcome" in str(errors[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _catch(fn, errors):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)


def test_a_reattached_call_is_read_from_its_own_folder(fake_kind, tmp_path):
    """A runner that finds the call an earlier attempt started returns that call's folder:
    the pipeline reads the outcome there and removes the folder this attempt prepared."""
    cfg = config()
    plan, earlier = package(tmp_path, lambda: "from the earlier attempt", cfg=cfg)
    write_meta(earlier)
    Execution(plan.runner(cfg), earlier.call).start()
    _, fresh = package(tmp_path, lambda: "never run", cfg=cfg)
    write_meta(fresh)
    assert fresh.call.folder != earlier.call.folder

    class Reattaching(type(plan.runner(cfg))):
        def submit(self, call):
            return Handle(self.kind, self.name, "earlier", earlier.call.folder_uri)

        def wait(self, call, handle):
            return None

    execution = Execution(Reattaching("f", cfg.targets["f"], cfg), fresh.call)
    assert execution.start() is None
    assert result(execution, earlier.meta) == "from the earlier attempt"
    assert not fresh.call.store.exists(fresh.call.folder)
    assert fresh.call.store.exists(earlier.call.folder / HANDLE_FILE)
