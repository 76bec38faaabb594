"""A 200 MB numpy array between tasks: through the store, by reference (tests/test_artifacts_api.py)."""

from __future__ import annotations

from airflow.sdk import dag, task

from airflow_infra import infra_task

N = 200 * 2**20 // 8  # float64 elements in 200 MiB


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_large_values():
    @infra_task(packages=["numpy>=2"], memory="1Gi")
    def make():
        import numpy as np

        return np.full(N, 0.5)

    @infra_task(packages=["numpy>=2"])
    def total(array) -> float:
        return float(array.sum())

    @task
    def plain_total(array) -> float:
        # An ordinary task: with InfraXComBackend it receives the array, not the reference.
        assert hasattr(array, "sum"), f"got {type(array).__name__}, not the array"
        return float(array.sum())

    made = make()
    total(made)
    plain_total(made)


infra_large_values()
