"""A fan-out (airflow_infra/pipeline/fanout.py) over a list made at run time, then a reduce:
tests/test_fan_out.py runs it on the local and docker targets. Items in `fail` raise, and
so do those listed in `{work}/fail.json` while it exists (`work`: a folder of the test's,
local target only); each item run there appends its index to `{work}/ran.log`. The task
tolerates two failed items."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, params={"n": 100, "fail": [], "work": ""}, render_template_as_native_obj=True, tags=["airflow-infra-tests"])
def infra_fan_out():
    @infra_task
    def make_items(params: dict) -> list[int]:
        return list(range(params["n"]))

    @infra_task(memory="256Mi")
    def square(x: int, k: int, fail: list, work: str) -> int:
        import json
        import os

        if work:
            with open(f"{work}/ran.log", "a") as log:  # one short write: whole lines, whichever process
                log.write(f"{x}\n")
            if os.path.exists(f"{work}/fail.json"):
                with open(f"{work}/fail.json") as fh:
                    fail = fail + json.load(fh)
        if x in fail:
            raise ValueError(f"item {x} is bad")
        return x * x * k

    @infra_task
    def total(results) -> dict:
        return {
            "n": len(results), "sum": sum(r for r in results if r is not None), "type": type(results).__name__,
            "failed": list(getattr(results, "failed", [])), "last": results[-1], "slice": results[1:4],
        }

    total(square.partial(k=2, fail="{{ params.fail }}", work="{{ params.work }}").fan_out(x=make_items(), chunk=7, max_failures=2))


infra_fan_out()
