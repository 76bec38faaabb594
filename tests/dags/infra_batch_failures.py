"""Batch jobs that fail: by the function's own exception, and by the process dying (tests/test_batch.py)."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_batch_failures():
    @infra_task(memory="512Mi")
    def raises() -> None:
        raise ValueError("bad input on batch")

    @infra_task(memory="512Mi")
    def dies() -> None:
        import os
        import sys

        print("about to die")
        sys.stdout.flush()
        os._exit(137)  # gone without a word, as an OOM kill leaves it (PID 1 cannot SIGKILL itself)

    raises()
    dies()


infra_batch_failures()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_batch_sleeper():
    @infra_task(memory="512Mi")
    def sleeps() -> None:
        import time

        print("sleeping until killed", flush=True)
        time.sleep(600)

    sleeps()


infra_batch_sleeper()
