"""Result caching through the real `airflow dags test`: hits, and each kind of miss."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

DAG_TEMPLATE = '''
from airflow.sdk import Param, dag
from airflow_infra import infra_task

OFFSET = {offset}


@dag(schedule=None, catchup=False, params={{"x": Param(3, type="integer"), "log": Param("", type="string")}})
def infra_cache():
    @infra_task(cache={cache!r}, packages={packages!r})
    def square(x: int, log: str) -> int:
        with open(log, "a") as fh:
            fh.write("square\\n")
        return x * x + OFFSET

    @infra_task(cache=True)
    def double(value: int, log: str) -> int:
        with open(log, "a") as fh:
            fh.write("double\\n")
        return value * 2

    double(square("{{{{ params.x }}}}", "{{{{ params.log }}}}"), "{{{{ params.log }}}}")


infra_cache()
'''


def test_cache_hits_and_misses(dags, tmp_path):
    dag_file = dags.home / "dags" / "infra_cache.py"
    log = tmp_path / "executions.log"

    def run(x=3, offset=0, cache=True, packages=("six==1.16.0",)):
        dag_file.write_text(DAG_TEMPLATE.format(offset=offset, cache=cache, packages=list(packages)))
        before = log.read_text().splitlines() if log.exists() else []
        result = dags.test("infra_cache", conf={"x": x, "log": str(log)})
        assert result.succeeded, result.output[-4000:]
        after = log.read_text().splitlines()
        return result, after[len(before):]

    first, ran = run()
    assert ran == ["square", "double"] and first.result("double") == 18
    assert first.call("square")["cache"] == {"key": first.call("square")["cache"]["key"], "hit": False}

    second, ran = run()
    assert ran == []  # both served from the cache
    assert second.result("double") == 18
    square = second.call("square")
    assert square["cache"]["hit"] and square["cache"]["from"]["run_id"] == first.run_id
    assert "cache hit: reusing the result of run" in second.output
    assert second.outcome("square")["cache_hit"]["run_id"] == first.run_id

    _, ran = run(x=4)  # other inputs
    assert ran == ["square", "double"]
    _, ran = run(offset=1)  # other code (a constant the function reads)
    assert ran == ["square", "double"]
    _, ran = run(packages=("six==1.17.0",))  # other environment; double's input is unchanged
    assert ran == ["square"]
    _, ran = run(cache="v2")  # a new cache version
    assert ran == ["square"]
    _, ran = run(cache=False)  # off: always runs
    assert ran == ["square"]
    dag_file.unlink()
