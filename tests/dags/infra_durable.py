"""Durable calls (airflow_infra/pipeline/durable.py) on the production-shaped Airflow:
tests/test_production_durable.py kills the worker processes running these tasks (the Celery pool
process that supervises each, and the task process under it) while their calls run, as a
lost worker would, or sends them SIGTERM, as a worker shutting down would, and checks that
the next try reattaches to the same process, container, Batch job and pod (the fake
Kubernetes API's) instead of starting another, and collects their results. It also marks
them failed mid-call, and checks that their calls are stopped."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, params={"seconds": 45}, tags=["airflow-infra-tests"])
def infra_durable():
    def slow(seconds: str) -> dict:
        import os
        import time

        started = time.time()
        print(f"call started: pid {os.getpid()} at {started}", flush=True)  # counted across the tries' logs
        time.sleep(float(seconds))
        return {"slept": float(seconds), "started": started, "host": os.uname().nodename}

    on_docker = infra_task(target="docker", retries=1, retry_delay=dt.timedelta(0), cache=False)(slow)
    on_batch = infra_task(target="batch", retries=1, retry_delay=dt.timedelta(0), cache=False)(slow)
    on_kubernetes = infra_task(target="k8s-sync", retries=1, retry_delay=dt.timedelta(0), cache=False)(slow)
    on_local = infra_task(target="local", retries=1, retry_delay=dt.timedelta(0), cache=False)(slow)
    on_docker.override(task_id="slow_docker")("{{ params.seconds }}")
    on_batch.override(task_id="slow_batch")("{{ params.seconds }}")
    on_kubernetes.override(task_id="slow_k8s")("{{ params.seconds }}")
    on_local.override(task_id="slow_local")("{{ params.seconds }}")


infra_durable()
