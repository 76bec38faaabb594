"""Artifacts on S3 (moto's server): calls staged both ways, results read back by the client."""

from __future__ import annotations

import pytest

from airflow_infra.client import Client
from tests.test_images import GPU_ELSEWHERE

pytestmark = pytest.mark.integration


def test_local_target_with_artifacts_on_s3(dags, infra_yaml, moto_s3):
    infra_yaml(f"artifacts: {moto_s3}\n")
    run = dags.test("fanout_example", conf={"n_shards": 2})
    assert run.succeeded, run.output[-4000:]
    assert f"stays in the store: {moto_s3}/fanout_example/" in run.output
    stored = Client(moto_s3).run("fanout_example", run.run_id)
    assert sum(stored["merge"].result.values()) == 40  # every word has 3+ letters
    assert stored["count_words"].map_indexes == [0, 1]


def test_docker_target_with_artifacts_on_s3(dags, docker_yaml, moto_s3, seed_data):
    docker_yaml(f"artifacts: {moto_s3}\n{GPU_ELSEWHERE}")  # fit_b's GPU: no GPU runtime here
    run = dags.test("recsys_seed")
    assert run.succeeded, run.output[-4000:]
    result = Client(moto_s3).run("recsys_seed", run.run_id)["ensemble"].result
    assert [round(c) for c in result["coef"]] == [3, -2, 1]
