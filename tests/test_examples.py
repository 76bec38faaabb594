"""Every example DAG runs with `airflow dags test`, and computes what it says it does."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import PLANTED_SEED_PASSWORD
from tests.dagrun import BIGMEM_RULES

pytestmark = pytest.mark.integration


def test_seed_scenario_conflicting_numpy_pins(dags, seed_data):
    run = dags.test("recsys_seed", conf={"lr": 0.2})
    assert run.succeeded, run.output[-4000:]
    # The input came from S3 through the declared `recsys_data` connection, whose secret
    # key is in no line the run printed (task logs included) and not in call.json.
    assert run.result("load")["source"] == seed_data and len(run.result("load")["columns"]["y"]) == 200
    assert f"loaded 200 rows from {seed_data}" in run.output
    assert run.call("load")["connections"] == ["recsys_data"]
    assert PLANTED_SEED_PASSWORD not in run.output and PLANTED_SEED_PASSWORD not in str(run.call("load"))
    result = run.result("ensemble")
    majors = sorted(v.split(".")[0] for v in result["numpy_versions"])
    assert majors == ["1", "2"], result
    assert result["lr"] == [0.2, 0.2]  # the param arrives as a float, not the string '0.2'
    assert [round(c) for c in result["coef"]] == [3, -2, 1]
    assert run.call("fit_a")["resources"]["memory"] == 512 * 2**20



def test_seed_scenario_without_its_connection_fails_before_running_load(dags, seed_data, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_RECSYS_DATA")
    run = dags.test("recsys_seed", conf={"lr": 0.2})
    assert not run.succeeded
    assert "DAG 'recsys_seed', task 'load': connections: no Airflow connection 'recsys_data'" in run.output


def test_params_drive_argument_and_resource(dags, infra_yaml):
    infra_yaml(BIGMEM_RULES)
    small = dags.test("params_example")
    assert small.succeeded, small.output[-4000:]
    assert small.call("train")["target"] == "local"
    assert small.result("train")["lr"] == 0.01

    big = dags.test("params_example", conf={"lr": 0.5, "memory": "2Gi", "epochs": 2})
    assert big.succeeded, big.output[-4000:]
    train = big.call("train")
    assert train["resources"]["memory"] == 2 * 2**30
    assert train["target"] == "bigmem"
    result = big.result("train")
    assert result["lr"] == 0.5 and result["epochs"] == 2 and result["loss"] == pytest.approx(0.25)
    assert result["run_id"] == big.run_id and result["year"] >= 2025
    assert big.result("report") == "lr=0.5 epochs=2 loss=0.2500"


def test_dynamic_fan_out_and_reduce(dags):
    run = dags.test("fanout_example", conf={"n_shards": 4})
    assert run.succeeded, run.output[-4000:]
    from dags_examples.fanout_example import WORDS

    expected: Counter = Counter()
    for i in range(4):
        shard = [WORDS[(i + j) % len(WORDS)] for j in range(20)]
        expected.update(w for w in shard if len(w) >= 3)
    assert run.result("merge") == dict(expected)
    for i in range(4):
        assert isinstance(run.result("count_words", i), Counter)
        # A Counter is not a plain value: XCom carried a reference, the store the value.
        assert run.outcome("count_words", i)["outputs"][0]["plain"] is False


def test_scale_out_example_runs_a_grid_past_the_mapping_limit_as_one_task(dags):
    run = dags.test("scale_out_example", conf={"n_points": 1500})
    assert run.succeeded, run.output[-4000:]
    best = run.result("best")
    assert best["points"] == 1500 and best["loss"] < 0.05 and set(best["point"]) == {"lr", "l2"}
    assert "fan-out over 1500 items of 'point'" in run.output and "fan-out: 1500/1500 items done, 0 failed, 0 running" in run.output
    assert run.output.count("[DAG TEST] starting task_id=evaluate") == 1  # one task instance, past max_map_length (1024)
