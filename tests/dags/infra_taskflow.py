"""What @task users expect, on @task.infra (run by tests/test_taskflow_parity.py)."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

LOGICAL = pendulum.datetime(2024, 3, 1, 12, 30, tz="Europe/Paris")


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"], params={"who": Param("ada", type="string")})
def infra_taskflow():
    @task.infra
    def logs() -> str:
        import logging

        logging.getLogger("my.module").info("info from the function")
        logging.getLogger("my.module").warning("a warning from the function")
        logging.getLogger("airflow.task").info("on airflow.task")
        logging.getLogger(__name__).debug("debug is below the level")
        print("printed as ever")
        return "logged"

    @task.infra
    async def awaited(x: int) -> int:
        import asyncio

        await asyncio.sleep(0.01)
        return x * 2

    @task.infra
    def plain_types(when, nested: dict) -> dict:
        import datetime as dt

        return {
            "when": [type(when).__module__, when.isoformat()],
            "nested": [type(nested["in"][0]).__module__, nested["in"][0].isoformat()],
            "gap": [type(nested["gap"]).__module__, nested["gap"].total_seconds()],
            "is_datetime": type(when) is dt.datetime,
        }

    @task.infra(templates_dict={"greeting": "hello {{ params.who }}", "run": "{{ run_id }}"})
    def templated(templates_dict=None) -> dict:
        return templates_dict

    @task.infra
    def context_values(params, run_id, ds, logical_date, ts, try_number, map_index: int = -1) -> dict:
        return {
            "params": params, "run_id": run_id, "ds": ds, "logical_date": logical_date.isoformat(),
            "ts": ts, "try_number": try_number, "map_index": map_index,
        }

    @task.infra(retries=0)
    def asks_for_context() -> str:
        from airflow.sdk import get_current_context

        return get_current_context()["run_id"]

    @task
    def upstream_datetime():
        return pendulum.datetime(2024, 5, 6, 7, 8, tz="UTC")

    @task.infra(show_return_value_in_logs=False)
    def from_upstream(when) -> str:
        import datetime as dt

        assert type(when) is dt.datetime, type(when)
        return when.isoformat()

    logs()
    awaited(21)
    plain_types(LOGICAL, {"in": [LOGICAL], "gap": pendulum.duration(hours=1)})
    templated()
    context_values()
    asks_for_context()
    from_upstream(upstream_datetime())


infra_taskflow()
