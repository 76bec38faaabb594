"""OOM escalation on the remote targets: kubernetes (tests/test_kubernetes.py; the fake
Kubernetes API runs the pod as a container with the pod's memory limit and reports the
kernel's OOM kill as the kubelet does, OOMKilled/137) and batch (tests/test_batch.py; the
moto double gives the job's container its MEMORY as a hard limit and reports the kill as
Batch does, OutOfMemoryError). 64Mi is too little for ~70 MiB: try 1 is killed, try 2 runs
with 128Mi."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_oom_remote():
    @infra_task(memory="64Mi", on_oom="double", retries=1, retry_delay=dt.timedelta(0))
    def grows() -> int:
        return len(bytearray(70 << 20))  # zero-filled: every page touched

    grows()


infra_oom_remote()
