"""A DAG whose middle task fails until fixed (tests/test_resume.py)."""

from __future__ import annotations

import os

from airflow.sdk import Param, dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"], params={"work": Param("/tmp", type="string")})
def infra_resume():
    @infra_task
    def load(work: str) -> dict:
        with open(os.path.join(work, "executions.log"), "a") as fh:
            fh.write("load\n")
        return {"rows": [1, 2, 3]}

    @infra_task
    def transform(data: dict, work: str) -> int:
        with open(os.path.join(work, "executions.log"), "a") as fh:
            fh.write("transform\n")
        if not os.path.exists(os.path.join(work, "fixed")):
            raise RuntimeError("not fixed yet")
        return sum(data["rows"])

    @infra_task
    def report(total: int) -> str:
        return f"total={total}"

    report(transform(load("{{ params.work }}"), "{{ params.work }}"))

infra_resume()
