"""The production-shaped Airflow the scheduler-level tests share (dev/prod-up.sh): PostgreSQL,
Redis, CeleryExecutor with two workers, and the scheduler, dag-processor, triggerer and
api-server as separate processes, on ports and in a state folder of the test session's own.
tests/conftest.py's `production_airflow` fixture starts one per session and stops it
(dev/prod-down.sh --purge) afterwards, whatever happened."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("AIRFLOW_INFRA_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
STARTUP_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0


def record(line: str) -> None:
    """A timing line for tests/artifacts/timings.txt (and the test's stderr)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "timings.txt", "a") as out:
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    print(line, file=sys.stderr)


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free, else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("", preferred))
        except OSError:
            sock.bind(("", 0))
        return sock.getsockname()[1]


class Deployment:
    """One running deployment: its REST API (signed in as admin), its home and its logs."""

    def __init__(self, state: Path, url: str, env: dict[str, str]):
        self.state, self.url, self.env = state, url, env
        self.home = state / "home"
        self.logs = state / "logs"
        self.password = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        with self.client() as client:
            answer = client.post("/auth/token", json={"username": "admin", "password": self.password})
            answer.raise_for_status()
        self.token = answer.json()["access_token"]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False)

    def get(self, path: str, **kwargs) -> httpx.Response:
        with self.client(self.token) as client:
            return client.get(path, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of each component's log, for failure messages."""
        out = []
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def wait_for_dags(self, dag_ids: list[str], timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while any(self.get(f"/api/v2/dags/{d}").status_code != 200 for d in dag_ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"DAGs {dag_ids} not parsed after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(1)

    def trigger(self, dag_id: str, conf: dict) -> str:
        with self.client(self.token) as client:
            # No logical date (null, as Airflow 3 allows).
            answer = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
            assert answer.status_code == 200, answer.text
            return answer.json()["dag_run_id"]

    def wait(self, dag_id: str, run_id: str, seen: set[str] | None = None) -> dict[str, str]:
        """Wait for the run to end; returns {"run": its state, task_id: state, ...}. `seen`
        collects every task state observed meanwhile."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        deadline = time.monotonic() + RUN_TIMEOUT
        with self.client(self.token) as client:
            state = None
            while time.monotonic() < deadline:
                state = client.get(path).json()["state"]
                if seen is not None:
                    seen.update(ti["state"] for ti in client.get(f"{path}/taskInstances").json()["task_instances"])
                if state in ("success", "failed"):
                    break
                time.sleep(0.5)
            tis = client.get(f"{path}/taskInstances").json()["task_instances"]
        return {"run": state, **{ti["task_id"]: ti["state"] for ti in tis}}


def deployment_yaml(registry: str, artifacts: str, batch_queue: str | None = None) -> str:
    """The plugin tests' routing (tests/test_plugin.py), plus a deferrable kubernetes target
    (the fake Kubernetes API, a test double) and the artifact store on moto's S3, where pods
    and both workers reach it."""
    from tests.test_plugin import routing_yaml

    certs = [os.environ["SSL_CERT_FILE"]] if os.environ.get("SSL_CERT_FILE") else []
    k8s = (
        "  k8s: {kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, deferrable: true, log_interval: 5, "
        "dashboard_url: 'https://dashboard.test/#/pod/{namespace}/{name}'}\n"
        # Blocking: a worker follows the pod (tests/test_production_durable.py kills that worker).
        "  k8s-sync: {kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true}\n"
    )
    if batch_queue:  # moto's Batch (its jobs run on this machine's Docker engine)
        k8s += f"  batch: {{kind: batch, job_queue: {batch_queue}, region: us-east-1, pass_credentials: true, poll_interval: 1}}\n"
        k8s += (f"  batch-deferred: {{kind: batch, job_queue: {batch_queue}, region: us-east-1, pass_credentials: true, "
                "poll_interval: 1, deferrable: true}\n")
    return routing_yaml(registry).replace("targets:\n", "targets:\n" + k8s) + f"artifacts: {artifacts}\nca_certificates: {certs}\n"


def start(dags: list[Path], infra_yaml: str, env: dict[str, str]) -> Deployment:
    """dev/prod-up.sh in a fresh state folder, with `dags` copied into its DAGs folder and
    `infra_yaml` as its infra.yaml; `env` adds variables (connections) its processes see."""
    # Not under pytest's tmp folders (mode 700): PostgreSQL runs as the postgres user and must
    # reach its data folder.
    state = Path(tempfile.mkdtemp(prefix="airflow-infra-prod-"))
    state.chmod(0o755)
    folder = state / "dags"
    folder.mkdir()
    for source in dags:
        shutil.copy(source, folder)
    (state / "home").mkdir()
    (state / "home" / "infra.yaml").write_text(infra_yaml)
    api_port = free_port()
    full_env = {
        # Only the deployment's settings: nothing from the session's own Airflow environment.
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_INFRA_", "AIRFLOW_HOME"))},
        **env,
        "PROD_DIR": str(state),
        "PROD_DAGS": str(folder),
        "PROD_PG_PORT": str(free_port()),
        "PROD_REDIS_PORT": str(free_port()),
        "PROD_API_PORT": str(api_port),
    }
    started = time.monotonic()
    up = subprocess.run(["bash", str(REPO / "dev" / "prod-up.sh")], env=full_env, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        stop(full_env)
        raise AssertionError(f"dev/prod-up.sh failed:\n{up.stdout[-3000:]}{up.stderr[-3000:]}")
    deployment = Deployment(state, f"http://127.0.0.1:{api_port}", full_env)
    record(f"production-shaped Airflow (Celery, PostgreSQL, Redis) up in {time.monotonic() - started:.1f}s")
    return deployment


def stop(env: dict[str, str]) -> None:
    keep = os.environ.get("AIRFLOW_INFRA_KEEP_TEST_HOME")
    subprocess.run(["bash", str(REPO / "dev" / "prod-down.sh"), *([] if keep else ["--purge"])], env=env, timeout=300)
    if keep:
        print(f"production deployment's state kept: {env['PROD_DIR']}", file=sys.stderr)
