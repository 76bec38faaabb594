"""What the docker target's containers are labelled with: the call's identity, so a later try
(or a person) finds what an earlier one left; a value a terminal would mangle stays out."""

from __future__ import annotations

from types import SimpleNamespace

from airflow_infra.targets.docker.runner import container_labels, task_instance_key


def _call(run_id: str = "manual__2026-11-29T16:51:47.241291+00:00", try_number: int = 1, map_index: int = -1):
    return SimpleNamespace(dag_id="d", task_id="t", run_id=run_id, map_index=map_index, try_number=try_number)


def test_labels_name_the_task_instance_and_the_try():
    labels = container_labels(_call(try_number=2, map_index=3))
    assert labels == {
        "org.airflow-infra.ti": task_instance_key(_call(map_index=3)),
        "org.airflow-infra.dag": "d", "org.airflow-infra.task": "t",
        "org.airflow-infra.run": "manual__2026-11-29T16:51:47.241291+00:00",
        "org.airflow-infra.map-index": "3", "org.airflow-infra.try": "2",
    }


def test_every_try_of_a_task_instance_shares_its_key_and_nothing_else_does():
    key = task_instance_key(_call())
    assert task_instance_key(_call(try_number=5)) == key
    assert task_instance_key(_call(map_index=0)) != key
    assert task_instance_key(_call(run_id="manual__other")) != key


def test_a_run_id_with_control_characters_is_not_a_label_but_still_keyed():
    hostile = "manual__x\n\x1b[31mred"
    labels = container_labels(_call(run_id=hostile))
    assert "org.airflow-infra.run" not in labels
    assert labels["org.airflow-infra.ti"] == task_instance_key(_call(run_id=hostile)) != task_instance_key(_call())
    # Anchored at the very end: a trailing newline alone is refused too.
    assert "org.airflow-infra.run" not in container_labels(_call(run_id="manual__x\n"))
