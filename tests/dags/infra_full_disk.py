"""A result larger than the artifact store's free space (tests/test_store_integrity.py mounts a small tmpfs)."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_full_disk():
    @infra_task
    def too_big() -> bytes:
        return b"x" * (8 << 20)

    @infra_task(trigger_rule="all_done")
    def small() -> int:
        return 1

    too_big() >> small()


infra_full_disk()
