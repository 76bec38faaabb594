"""A DAG for the test-only target kind `fake` (tests/fake_kind), run by tests/test_target_plugin.py."""

from __future__ import annotations

from airflow.sdk import dag, task

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_fake_kind():
    @infra_task(gpu=1)  # the rules send gpu tasks to the fake target
    def on_fake(x: int) -> int:
        print("running on the fake kind")
        return x * 3

    @infra_task
    def on_local(y: int) -> int:
        return y + 1

    @task
    def check(value: int) -> int:
        assert value == 43, value
        return value

    check(on_local(on_fake(14)))


infra_fake_kind()
