"""Versioned artifacts, the client API and CLI, and large values, on real runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from airflow_infra.client import Client
from airflow_infra.runtime import HASH_MAX_BYTES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_fanout_runs(dags):
    first = dags.test("fanout_example", conf={"n_shards": 2})
    second = dags.test("fanout_example", conf={"n_shards": 3})
    assert first.succeeded and second.succeeded, (first.output[-3000:], second.output[-3000:])
    return first, second


def test_client_reads_past_runs_without_the_database(dags, two_fanout_runs):
    first, second = two_fanout_runs
    client = Client(f"file://{dags.home}/infra/artifacts")
    assert "fanout_example" in client.dags()
    run_ids = [r.run_id for r in client.runs("fanout_example")]
    assert run_ids.index(second.run_id) < run_ids.index(first.run_id)  # newest first

    old = client.run("fanout_example", first.run_id)
    assert old["count_words"].map_indexes == [0, 1]  # a later run overwrote nothing
    assert client.latest_run("fanout_example")["count_words"].map_indexes == [0, 1, 2]
    merged = old["merge"].result
    assert sum(merged.values()) == 40
    call = old["count_words"][1]
    assert call.ok and call.target == "local" and call.try_number == 1
    assert call.environment["packages"] == ["numpy>=2"] and len(call.environment["hash"]) == 64
    assert call.requested["memory"] == 128 * 2**20
    assert call.metrics["peak_memory_bytes"] > 0 and call.metrics["wall_seconds"] >= 0
    assert len(call.meta["code_fingerprint"]) == 64
    assert set(old.tasks) == {"make_shards", "count_words", "merge"}


def test_cli_shows_requested_against_measured(dags, two_fanout_runs):
    first, _ = two_fanout_runs
    env_cmd = [sys.executable, "-m", "airflow_infra.cli", "--store", f"file://{dags.home}/infra/artifacts"]
    runs = subprocess.run([*env_cmd, "runs", "fanout_example"], capture_output=True, text=True, check=True).stdout
    assert first.run_id in runs
    shown = subprocess.run([*env_cmd, "show", "fanout_example", first.run_id], capture_output=True, text=True, check=True).stdout
    assert "count_words[1]: ok on 'local'" in shown
    assert "of 128Mi requested" in shown
    assert "hint:" not in shown  # 128Mi is generous but too small a request to nag about


def test_without_the_backend_a_plain_task_gets_the_reference(dags):
    run = dags.test("infra_large_values")
    assert not run.succeeded and "got dict, not the array" in run.output
    assert run.result("total") == 200 * 2**20 // 8 * 0.5  # @infra_task downstream is unaffected


def test_200mb_array_travels_by_reference(dags):
    run = dags.test("infra_large_values", env={"AIRFLOW__CORE__XCOM_BACKEND": "airflow_infra.xcom.InfraXComBackend"})
    assert run.succeeded, run.output[-4000:]
    [output] = run.outcome("make")["outputs"]
    assert output["plain"] is False and output["bytes"] > 200 * 2**20
    assert output["sha256"] is None and output["bytes"] > HASH_MAX_BYTES  # too big to hash cheaply
    expected = 200 * 2**20 // 8 * 0.5
    assert run.result("total") == expected
    # The plain @task got the array itself, loaded through InfraXComBackend (it asserts so).
    assert "got dict, not the array" not in run.output
    assert Client(f"file://{dags.home}/infra/artifacts").run("infra_large_values", run.run_id)["make"].result.shape == (200 * 2**20 // 8,)


def test_right_sizing_advice():
    from airflow_infra.rightsizing import advice

    over = advice({"memory": 4 * 2**30, "cpu": 8.0}, {"peak_memory_bytes": 300 * 2**20, "cpu_seconds": 10.0, "wall_seconds": 10.0})
    assert any("far below the request 4Gi; memory='512Mi'" in h for h in over)
    assert any("used 1.00 cores on average of the 8 requested" in h for h in over)
    under = advice({"memory": 256 * 2**20}, {"peak_memory_bytes": 400 * 2**20, "cpu_seconds": 1, "wall_seconds": 1})
    assert under and "above the request 256Mi" in under[0] and "memory='1Gi'" in under[0]
    assert advice({"memory": 512 * 2**20, "cpu": 1.0}, {"peak_memory_bytes": 300 * 2**20, "cpu_seconds": 5, "wall_seconds": 6}) == []
