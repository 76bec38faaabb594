"""One task in a pod, deferrable, under the real scheduler and triggerer (tests/test_plugin_airflow.py)."""

from __future__ import annotations

from airflow.sdk import Param, dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"], params={"x": Param(3, type="integer")})
def infra_scheduler_kube():
    @infra_task(target="k8s", memory="256Mi")
    def square(x: int) -> int:
        import time

        print(f"squaring {x} in a pod", flush=True)
        # Longer than a loaded worker takes to exit after deferring: when the trigger fires
        # before the scheduler has seen that exit, LocalExecutor's "success" for the deferring
        # workload meets a re-queued task and Airflow fails it ("state changed externally").
        time.sleep(12)
        return x * x

    square("{{ params.x }}")


infra_scheduler_kube()
