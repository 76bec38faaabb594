"""The production-shaped deployment (dev/prod-up.sh): CeleryExecutor with two workers and a
Redis broker, PostgreSQL as the metadata database, the scheduler, dag-processor, triggerer
and api-server as separate processes, artifacts on moto's S3. The examples are triggered
through the REST API, as a user or a CI system would, and their results read from the store.

One deployment serves the module, in a state folder and on ports of its own; it is stopped
and removed afterwards (dev/prod-down.sh --purge) whatever happened."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from airflow_infra.client import Client
from tests.dagrun import REPO
from tests.test_plugin_airflow import free_port

pytestmark = pytest.mark.integration
RUN_TIMEOUT = 300.0
WORKLOAD = re.compile(r"Executing workload in Celery: .* log_path='dag_id=([^/]+)/run_id=([^/]+)/task_id=([^/]+)/")


class Deployment:
    def __init__(self, home: Path, url: str, env: dict[str, str]):
        self.home, self.url, self.env = home, url, env
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
            answer = client.post("/auth/token", json={"username": "admin", "password": password})
            answer.raise_for_status()
        self.token = answer.json()["access_token"]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60, trust_env=False)

    def trigger(self, dag_id: str, conf: dict) -> str:
        with self.client() as client:
            answer = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
            assert answer.status_code == 200, answer.text
            return answer.json()["dag_run_id"]

    def wait(self, dag_id: str, run_id: str) -> dict[str, str]:
        """The run's end state; returns its task instances' states."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        deadline = time.monotonic() + RUN_TIMEOUT
        with self.client() as client:
            while time.monotonic() < deadline:
                if client.get(path).json()["state"] in ("success", "failed"):
                    break
                time.sleep(1)
            tis = client.get(f"{path}/taskInstances").json()["task_instances"]
            return {"run": client.get(path).json()["state"], **{ti["task_id"]: ti["state"] for ti in tis}}


@pytest.fixture(scope="module")
def deployment(seed_data) -> Iterator[Deployment]:
    # Not under pytest's tmp folders (mode 700): PostgreSQL runs as the postgres user and must
    # reach its data folder.
    state = Path(tempfile.mkdtemp(prefix="airflow-infra-prod-"))
    state.chmod(0o755)
    api_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_INFRA_", "AIRFLOW_HOME"))},
        "PROD_DIR": str(state),
        "PROD_PG_PORT": str(free_port()),
        "PROD_REDIS_PORT": str(free_port()),
        "PROD_API_PORT": str(api_port),
    }
    try:
        started = time.monotonic()
        up = subprocess.run(["bash", str(REPO / "dev" / "prod-up.sh")], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        print(f"production-shaped deployment up in {time.monotonic() - started:.1f}s")
        yield Deployment(state / "home", f"http://127.0.0.1:{api_port}", env)
    finally:
        subprocess.run(["bash", str(REPO / "dev" / "prod-down.sh"), "--purge"], env=env, timeout=300)


def test_examples_run_on_celery_workers_with_postgres_and_s3(deployment):
    # Both examples at once: the two workers share the queue, the environment cache and the store.
    runs = {dag_id: deployment.trigger(dag_id, conf) for dag_id, conf in (("recsys_seed", {"lr": 0.2}), ("params_example", {"lr": 0.5}))}
    states = {dag_id: deployment.wait(dag_id, run_id) for dag_id, run_id in runs.items()}
    assert all(s["run"] == "success" for s in states.values()), states
    store = Client("s3://aws_default@airflow-infra-prod/artifacts")
    seed = store.run("recsys_seed", runs["recsys_seed"])
    assert [round(c) for c in seed["ensemble"].result["coef"]] == [3, -2, 1]
    assert sorted(v.split(".")[0] for v in seed["ensemble"].result["numpy_versions"]) == ["1", "2"]
    assert store.run("params_example", runs["params_example"])["train"].result["lr"] == 0.5
    # Every task instance ran once, on one of the Celery workers (their logs name each workload).
    logs = Path(deployment.env["PROD_DIR"]) / "logs"
    executed = Counter()
    for n in (1, 2):
        for line in (logs / f"worker-{n}.log").read_text(errors="replace").splitlines():
            if match := WORKLOAD.search(line):
                executed[match.groups()] += 1
    expected = {(dag_id, run_id, task_id) for dag_id, run_id in runs.items() for task_id in states[dag_id] if task_id != "run"}
    assert set(executed) == expected and set(executed.values()) == {1}, executed
