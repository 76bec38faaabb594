"""Durable calls while deferred: a pod (the fake Kubernetes API's) and a Batch job (moto's)
waited for in the triggerer. tests/test_production_durable.py restarts the triggerer while both
are deferred: the new triggerer picks the triggers up again, and each task ends with the
one call it started."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, params={"seconds": 30}, tags=["airflow-infra-tests"])
def infra_durable_deferred():
    def slow(seconds: str) -> dict:
        import time

        started = time.time()
        for tick in range(int(float(seconds) // 2)):  # a line every 2 s: the task log shows them while deferred
            print(f"tick {tick}", flush=True)
            time.sleep(2)
        time.sleep(float(seconds) % 2)
        return {"slept": float(seconds), "started": started}

    infra_task(target="k8s", cache=False)(slow).override(task_id="deferred_k8s")("{{ params.seconds }}")
    infra_task(target="batch-deferred", cache=False)(slow).override(task_id="deferred_batch")("{{ params.seconds }}")


infra_durable_deferred()
