"""A fan-out whose items sleep, for tests/test_fan_out.py to kill mid-run: each item, on the
local target, writes its pid under `{work}/pids/` first (elsewhere `work` is empty)."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, params={"n": 6, "seconds": 120, "work": ""}, render_template_as_native_obj=True,
     tags=["airflow-infra-tests"])
def infra_fan_out_sleeper():
    @infra_task
    def make_items(params: dict) -> list[int]:
        return list(range(params["n"]))

    @infra_task(memory="256Mi")
    def sleeps(x: int, seconds: int, work: str) -> int:
        import os
        import time

        if work:
            os.makedirs(f"{work}/pids", exist_ok=True)
            open(f"{work}/pids/{os.getpid()}", "w").close()
        time.sleep(seconds)
        return x

    sleeps.partial(seconds="{{ params.seconds }}", work="{{ params.work }}").fan_out(x=make_items(), chunk=1, parallelism=6)


infra_fan_out_sleeper()
