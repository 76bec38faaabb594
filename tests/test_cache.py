"""Result caching through the real `airflow dags test`: hits, and each kind of miss.

One DAG of independent branches, each with one reason to miss, so three runs show them all:
the first runs everything, the second (nothing changed) is served from the cache except the
task that does not cache, the third changes one thing per branch at once."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

DAG_TEMPLATE = '''
from airflow.sdk import Param, dag
from airflow_infra import infra_task

OFFSET = {offset}


def note(log, name):
    with open(log, "a") as fh:
        fh.write(name + "\\n")


@dag(schedule=None, catchup=False, params={{"x": Param(3, type="integer"), "log": Param("", type="string")}})
def infra_cache():
    @infra_task(cache=True)
    def inputs(x: int, log: str) -> int:  # misses when its argument changes
        note(log, "inputs")
        return x * x

    @infra_task(cache=True)
    def double(value: int, log: str) -> int:  # downstream of inputs: a new input, a miss
        note(log, "double")
        return value * 2

    @infra_task(cache=True)
    def code(log: str) -> int:  # misses when the code changes (a constant it reads)
        note(log, "code")
        return OFFSET

    @infra_task(cache=True, packages={packages!r})
    def env(log: str) -> int:  # misses when its environment changes
        note(log, "env")
        return 7

    @infra_task(cache=True)
    def after_env(value: int, log: str) -> int:  # env's result is the same: still a hit
        note(log, "after_env")
        return value + 1

    @infra_task(cache={version!r})
    def version(log: str) -> int:  # misses under a new cache version
        note(log, "version")
        return 1

    @infra_task(cache=False)
    def off(log: str) -> int:  # never cached
        note(log, "off")
        return 2

    log = "{{{{ params.log }}}}"
    double(inputs("{{{{ params.x }}}}", log), log)
    code(log)
    after_env(env(log), log)
    version(log)
    off(log)


infra_cache()
'''


def test_cache_hits_and_misses(dags, tmp_path):
    dag_file = dags.home / "dags" / "infra_cache.py"
    log = tmp_path / "executions.log"

    def run(x=3, offset=0, packages=("six==1.16.0",), version="v1"):
        dag_file.write_text(DAG_TEMPLATE.format(offset=offset, packages=list(packages), version=version))
        before = log.read_text().splitlines() if log.exists() else []
        result = dags.test("infra_cache", conf={"x": x, "log": str(log)})
        assert result.succeeded, result.output[-4000:]
        after = log.read_text().splitlines()
        return result, sorted(after[len(before):])

    everything = sorted(["inputs", "double", "code", "env", "after_env", "version", "off"])
    first, ran = run()
    assert ran == everything and first.result("double") == 18
    assert first.call("inputs")["cache"] == {"key": first.call("inputs")["cache"]["key"], "hit": False}
    assert "cache" not in first.call("off")  # cache=False: no key, no lookup

    second, ran = run()
    assert ran == ["off"]  # everything else served from the cache
    assert second.result("double") == 18 and second.result("code") == 0
    inputs = second.call("inputs")
    assert inputs["cache"]["hit"] and inputs["cache"]["from"]["run_id"] == first.run_id
    assert "cache hit: reusing the result of run" in second.output
    assert second.outcome("inputs")["cache_hit"]["run_id"] == first.run_id

    # One change per branch: other inputs, other code, another environment, a new version.
    third, ran = run(x=4, offset=1, packages=("six==1.17.0",), version="v2")
    assert ran == sorted(["inputs", "double", "code", "env", "version", "off"])  # after_env: same input, a hit
    assert third.result("double") == 32 and third.result("code") == 1
    assert third.call("after_env")["cache"]["hit"] and third.call("after_env")["cache"]["from"]["run_id"] == first.run_id
    dag_file.unlink()
