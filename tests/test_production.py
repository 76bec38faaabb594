"""The examples on the production-shaped Airflow (tests/production.py, dev/prod-up.sh):
CeleryExecutor with two workers and a Redis broker, PostgreSQL as the metadata database,
artifacts on moto's S3. Runs are triggered through the REST API, as a user or a CI system
would, and their results read from the store."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from airflow_infra.client import Client

pytestmark = pytest.mark.integration
WORKLOAD = re.compile(r"Executing workload in Celery: .* log_path='dag_id=([^/]+)/run_id=([^/]+)/task_id=([^/]+)/")


def test_examples_run_at_once_on_two_celery_workers(production_airflow, moto_s3):
    # Two DAGs, one of them mapped, at the same time: the workers share the queue, the
    # environment cache (fanout_example's numpy environment) and the store.
    runs = {
        "fanout_example": production_airflow.trigger("fanout_example", {"n_shards": 6}),
        "params_example": production_airflow.trigger("params_example", {"lr": 0.5, "epochs": 2}),
    }
    states = {dag_id: production_airflow.wait(dag_id, run_id) for dag_id, run_id in runs.items()}
    assert all(s["run"] == "success" for s in states.values()), (states, production_airflow.log_tail())
    store = Client(moto_s3)
    fanout = store.run("fanout_example", runs["fanout_example"])
    assert fanout["merge"].result and len(fanout["count_words"].map_indexes) == 6
    assert store.run("params_example", runs["params_example"])["train"].result["lr"] == 0.5
    # Every task instance (each mapped index) ran exactly once, on one of the Celery workers:
    # their logs name each workload they executed.
    executed: Counter = Counter()
    for n in (1, 2):
        for line in (production_airflow.logs / f"worker-{n}.log").read_text(errors="replace").splitlines():
            if (match := WORKLOAD.search(line)) and match.group(2) in runs.values():
                executed[match.group(1), match.group(3)] += 1
    expected = Counter({("fanout_example", "make_shards"): 1, ("fanout_example", "count_words"): 6, ("fanout_example", "merge"): 1})
    expected.update({("params_example", task_id): 1 for task_id in states["params_example"] if task_id != "run"})
    assert executed == expected
