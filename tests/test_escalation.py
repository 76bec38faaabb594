"""OOM escalation's decisions (pipeline/escalation.py) on a real store, without running calls:
the policy and its cap, what a previous try's record leads to, records that are refused, and
the parse-time rules. The real OOM kills are in tests/test_oom_escalation.py."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from airflow.sdk import DAG

from airflow_infra import infra_task
from airflow_infra.artifacts import CALL_META_FILE, ArtifactStore
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraSpecError, InfraStoreError
from airflow_infra.operator import InfraOperator
from airflow_infra.pipeline.escalation import OOM_FILE, Policy, advice, policy_for, previous_try
from airflow_infra.targets.oom import OutOfMemory, out_of_memory

MI = 1 << 20
LOG = logging.getLogger("test_escalation")


def config(**oom) -> InfraConfig:
    return InfraConfig.model_validate({"oom": oom})


def test_the_policy_a_declared_value_wins_and_the_cap_is_4x_without_max_memory():
    assert policy_for(None, "64Mi", config(), LOG) is None  # off unless asked for
    declared = policy_for("double", "64Mi", config(), LOG)
    assert (declared.declared, declared.cap, declared.cap_source) == (64 * MI, 256 * MI, "4x the declared memory")
    platform = policy_for(None, 64 * MI, config(on_oom="double", max_memory="1Gi"), LOG)
    assert platform.on_oom == "double" and platform.cap == 1024 * MI and platform.cap_source == "infra.yaml oom.max_memory"
    assert policy_for(None, None, config(on_oom="double"), LOG) is None  # nothing declared to double
    assert policy_for("double", "2Gi", config(max_memory="1Gi"), LOG).cap == 2048 * MI  # never below the declared request
    assert policy_for("double", "lots", config(), LOG) is None  # planning reports a bad rendered memory, with DAG and task


def test_doubling_stops_at_the_cap():
    policy = Policy("double", 64 * MI, 200 * MI, "x")
    assert [policy.next_request(m) for m in (64 * MI, 100 * MI, 200 * MI, 400 * MI, 8 * MI)] == [128 * MI, 200 * MI, 200 * MI, 200 * MI, 64 * MI]


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/store")


def folder(store: ArtifactStore, try_number: int, map_index: int = -1):
    path = store.task_dir("d", "r:1", "t", map_index, try_number)
    store.write_json(path / CALL_META_FILE, {"try_number": try_number, "resources": {"memory": 64 * MI}})
    return path


POLICY = Policy("double", 64 * MI, 256 * MI, "4x the declared memory")


def test_an_oom_record_doubles_what_the_try_ran_with_per_map_index(store):
    store.write_json(folder(store, 1, map_index=3) / OOM_FILE, {"oom": True, "memory": 64 * MI, "evidence": "e", "try_number": 1})
    folder(store, 1, map_index=4)
    assert previous_try(store, "d", "r:1", "t", 3, 1, POLICY) is None  # the first try has no previous one
    up = previous_try(store, "d", "r:1", "t", 3, 2, POLICY)
    assert (up.memory, up.ran_with, up.after_try, up.oom) == (128 * MI, 64 * MI, 1, True)
    assert previous_try(store, "d", "r:1", "t", 4, 2, POLICY) is None  # index 4 was not killed
    assert previous_try(store, "d", "r:1", "t", 5, 2, POLICY) is None  # index 5 never ran


def test_a_try_after_an_escalated_one_that_failed_otherwise_keeps_its_request(store):
    path = folder(store, 2)
    store.write_json(path / CALL_META_FILE, {"resources": {"memory": 128 * MI}, "escalated": {"after_try": 1}})
    kept = previous_try(store, "d", "r:1", "t", -1, 3, POLICY)
    assert (kept.memory, kept.oom) == (128 * MI, False)


@pytest.mark.parametrize(
    "record",
    [
        {"oom": True, "memory": "64Mi"}, {"oom": True, "memory": 1}, {"oom": True, "memory": 2**60}, {"oom": "yes", "memory": 64 * MI},
        {"oom": True, "memory": 64 * MI, "command": "rm -rf /"}, [1], "oom", {"oom": True, "memory": True},
    ],
)
def test_a_record_that_is_not_what_the_pipeline_writes_is_refused(store, record):
    store.write_json(folder(store, 1) / OOM_FILE, record)
    with pytest.raises(InfraStoreError, match="refusing"):
        previous_try(store, "d", "r:1", "t", -1, 2, POLICY)


def test_a_record_that_is_not_json_is_refused(store):
    path = folder(store, 1)
    store.write_bytes(path / OOM_FILE, b"\xff not json")
    with pytest.raises(InfraStoreError, match="not an out-of-memory record"):
        previous_try(store, "d", "r:1", "t", -1, 2, POLICY)
    store.remove_tree(path / OOM_FILE)
    store.write_bytes(path / CALL_META_FILE, b"{ not json")
    with pytest.raises(InfraStoreError, match="call.json: it is not JSON"):
        previous_try(store, "d", "r:1", "t", -1, 2, POLICY)


def test_the_error_says_what_follows():
    assert advice(None, 64 * MI, 1, 2) == ""
    assert advice(POLICY, 64 * MI, 1, 2) == "; on_oom='double': the next try asks for 128Mi (cap 256Mi)"
    assert "escalation stopped at the cap of 256Mi (4x the declared memory)" in advice(POLICY, 256 * MI, 2, 2)
    assert "no retries left (retries=2)" in advice(POLICY, 128 * MI, 3, 2)


def test_the_out_of_memory_mark_survives_added_detail():
    said = out_of_memory(64 * MI, "cgroup") + "\nlast lines of its log: ..."
    assert isinstance(said, OutOfMemory) and said.limit == 64 * MI and said.startswith("out of memory: the task hit")


def test_on_oom_needs_memory_and_retries_in_every_form():
    with DAG("oom_dag", schedule=None, default_args={"retries": 2, "retry_delay": dt.timedelta(0)}):

        @infra_task(memory="64Mi", on_oom="double")
        def fit(x: int = 1) -> int:
            return x

        fit()
        fit.expand(x=[1, 2])  # retries from default_args, in every form
        InfraOperator.partial(task_id="classic", python_callable=len, memory="1Gi", on_oom="double").expand(op_args=[[[1]]])
        InfraOperator(task_id="templated", python_callable=len, memory="{{ params.m }}", on_oom="double")
        with pytest.raises(InfraSpecError, match="task 'no_memory': on_oom='double' needs `memory`"):
            fit.override(task_id="no_memory", memory=None)()
    with DAG("oom_dag_no_retries", schedule=None):
        for form in ("plain", "expand", "classic"):
            with pytest.raises(InfraSpecError, match=r"on_oom='double' with retries=0: .*set retries >= 1"):
                if form == "plain":
                    fit()
                elif form == "expand":
                    fit.expand(x=[1])
                else:
                    InfraOperator.partial(task_id="c", python_callable=len, memory="1Gi", on_oom="double").expand(op_args=[[[1]]])


def test_a_resumed_try_reads_its_policy_back_from_call_json():
    """A deferred try (kubernetes, batch) resumes in execute_complete with call.json's policy."""
    assert Policy.from_json(POLICY.to_json()) == POLICY
    odd = Policy("double", 100_000_000, 400_000_000, "x")  # no whole number of Mi: the bytes are kept
    assert Policy.from_json(odd.to_json()) == odd
    for broken in (None, {}, {"on_oom": "triple"}, {"on_oom": "double", "declared_bytes": "lots", "cap_bytes": 1 << 30, "cap_source": "x"}):
        assert Policy.from_json(broken) is None
