"""Test set-up: one throwaway AIRFLOW_HOME per session, set before Airflow is imported.

Integration tests run the real `airflow dags test` in a subprocess against a SQLite DB in
that home, with the examples and tests/dags copied into its dags folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.dagrun import REPO

HOME = Path(tempfile.mkdtemp(prefix="airflow-infra-tests-"))
DAGS = HOME / "dags"

os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
)
os.environ.pop("AIRFLOW_INFRA_TARGET", None)

# Secrets planted for the whole session (tests/test_zz_planted_secrets.py looks for them in
# every layer the suite pushed and in the artifact store): one in the workers' environment,
# where a builder must never pick it up, and one a test DAG passes as a task's env value
# (tests/dags/infra_docker_limits.py) from an Airflow variable, so it is in no DAG source.
PLANTED_WORKER_SECRET = f"planted-worker-{os.urandom(6).hex()}"
PLANTED_ENV_VALUE = f"planted-env-{os.urandom(6).hex()}"
os.environ["AIRFLOW_INFRA_TEST_WORKER_SECRET"] = PLANTED_WORKER_SECRET
os.environ["AIRFLOW_VAR_PLANTED_API_TOKEN"] = PLANTED_ENV_VALUE  # an Airflow variable the DAG's env renders
# And an Airflow connection's password, which tests/dags/infra_connections.py declares: it is
# delivered to calls, and must be in no layer and no file of the store either.
PLANTED_CONN_SECRET = f"planted-conn-{os.urandom(6).hex()}"
PLANTED_SEED_PASSWORD = f"planted-seed-{os.urandom(6).hex()}"  # the seed example's aws connection (moto takes any)
os.environ["AIRFLOW_CONN_PLANTED_SESSION_DB"] = json.dumps(
    {"conn_type": "postgres", "host": "db.internal", "login": "session", "password": PLANTED_CONN_SECRET}
)

DAGS.mkdir(parents=True)
for source in [*(REPO / "dags_examples").glob("*.py"), *(REPO / "tests" / "dags").iterdir()]:
    if source.name != "__pycache__":
        (shutil.copytree if source.is_dir() else shutil.copy)(source, DAGS / source.name)

from tests.dagrun import DagRunner  # noqa: E402  (needs the environment above)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, text=True, timeout=600
    )
    return HOME


@pytest.fixture(scope="session")
def dags(airflow_db: Path) -> DagRunner:
    return DagRunner(HOME)


@pytest.fixture(scope="session")
def docker_infra() -> str:
    """A Docker engine, the base image and a registry (the dev scripts; each is idempotent).

    Returns a registry namespace of this session's own, so images start out missing."""
    for script in ("start-docker.sh", "base-image.sh", "start-registry.sh"):
        subprocess.run(["bash", str(REPO / "dev" / script)], check=True, timeout=900)
    return f"127.0.0.1:5000/test{os.getpid()}"


@pytest.fixture
def docker_yaml(infra_yaml, docker_infra):
    """infra.yaml with a docker target and this session's registry (plus the machine's CA bundle)."""
    certs = [os.environ["SSL_CERT_FILE"]] if os.environ.get("SSL_CERT_FILE") else []

    def write(extra: str = "", namespace: str = "") -> str:
        registry = docker_infra + namespace
        infra_yaml(f"registry: {registry}\nca_certificates: {certs}\ntargets:\n  docker: {{kind: docker}}\n{extra}")
        return registry

    return write


# Where dev/start-moto.sh and dev/start-fake-kube.sh listen; a second checkout testing beside
# this one points its tests at its own servers (MOTO_PORT / FAKE_KUBE_PORT, as the scripts read).
MOTO = f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '5001')}"
FAKE_KUBE_API = f"http://127.0.0.1:{os.environ.get('FAKE_KUBE_PORT', '5002')}"
AWS_CONN = json.dumps(
    {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1", "endpoint_url": MOTO}}
)


@pytest.fixture(scope="session")
def moto_s3() -> str:
    """moto's AWS server (dev/start-moto.sh) with a bucket of this session's own; `aws_default` points at it."""
    import boto3

    subprocess.run(["bash", str(REPO / "dev" / "start-moto.sh")], check=True, timeout=300)
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = AWS_CONN  # for this process and the `airflow dags test` it starts
    bucket = f"airflow-infra-tests-{os.getpid()}"
    boto3.client(
        "s3", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing"
    ).create_bucket(Bucket=bucket)
    return f"s3://aws_default@{bucket}/artifacts"


@pytest.fixture(scope="session")
def seed_data(moto_s3) -> str:
    """The seed example's input on moto's S3 (dev/seed_data.py, as `bash dev/demo.sh` writes it),
    and its `recsys_data` connection, for this process and the runs it starts. Its secret key
    is planted: tests/test_zz_planted_secrets.py finds it in no image layer or stored file."""
    conn = {"conn_type": "aws", "login": "testing", "password": PLANTED_SEED_PASSWORD,
            "extra": {"region_name": "us-east-1", "endpoint_url": MOTO}}
    os.environ["AIRFLOW_CONN_RECSYS_DATA"] = json.dumps(conn)
    subprocess.run([sys.executable, str(REPO / "dev" / "seed_data.py")], check=True, timeout=120)
    return "s3://airflow-infra-examples/recsys/rows.csv"


@pytest.fixture(scope="session")
def batch_queue(moto_s3) -> str:
    """An UNMANAGED compute environment and a job queue on moto: jobs run as Docker containers."""
    import boto3

    aws = {"region_name": "us-east-1", "endpoint_url": MOTO, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    name = f"airflow-infra-{os.getpid()}"
    role = boto3.client("iam", **aws).create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    batch = boto3.client("batch", **aws)
    env = batch.create_compute_environment(computeEnvironmentName=name, type="UNMANAGED", state="ENABLED", serviceRole=role)
    batch.create_job_queue(
        jobQueueName=name, state="ENABLED", priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}],
    )
    return name


@pytest.fixture
def infra_yaml():
    """Write $AIRFLOW_HOME/infra.yaml for one test; removed afterwards."""
    path = HOME / "infra.yaml"

    def write(text: str) -> Path:
        path.write_text(text)
        return path

    yield write
    path.unlink(missing_ok=True)
    # A file this process loaded and that then vanished is an error (config.load_config):
    # the next test starts as a process that never saw it.
    from airflow_infra import config

    config._cache.pop(path, None)


def pytest_sessionfinish(session, exitstatus):
    # The home holds built environments (hundreds of MB); keep it only when asked to.
    if not os.environ.get("AIRFLOW_INFRA_KEEP_TEST_HOME"):
        shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_kube(docker_infra) -> str:
    """The fake Kubernetes API (dev/fake_kube_api.py, a test double running pods as Docker
    containers); `kubernetes_default` points at it. Returns the kubeconfig's path."""
    subprocess.run(["bash", str(REPO / "dev" / "start-fake-kube.sh")], check=True, timeout=120)
    # The double outlives test sessions on a developer's machine: a session starts with an
    # empty `ml` namespace, as on a fresh CI machine (tests count the pods left behind).
    import requests

    for pod in requests.get(f"{FAKE_KUBE_API}/api/v1/namespaces/ml/pods", timeout=10).json()["items"]:
        requests.delete(f"{FAKE_KUBE_API}/api/v1/namespaces/ml/pods/{pod['metadata']['name']}", timeout=30)
    kubeconfig = os.environ.get("FAKE_KUBECONFIG", "/tmp/airflow-infra-fake-kube.yaml")
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": kubeconfig, "namespace": "default"}}
    )
    return kubeconfig


@pytest.fixture(scope="session")
def production_airflow(moto_s3, fake_kube, seed_data, docker_infra, batch_queue):
    """One production-shaped Airflow for the session (tests/production.py, dev/prod-up.sh):
    the examples, infra_scheduler_kube and the infra_durable DAGs, the plugin tests'
    routing plus batch targets, artifacts on this session's moto bucket,
    `kubernetes_default` at the fake Kubernetes API. A task instance whose worker stopped
    heartbeating fails after 20 s, not Airflow's 300: the worker-kill tests wait for that."""
    from tests import production

    dags = [*(REPO / "dags_examples").glob("*.py"), *(REPO / "tests" / "dags" / f for f in ("infra_scheduler_kube.py", "infra_durable.py", "infra_durable_deferred.py"))]
    yaml = production.deployment_yaml(f"127.0.0.1:5000/plugin-test{os.getpid()}", moto_s3, batch_queue)
    env = {name: os.environ[name] for name in ("AIRFLOW_CONN_KUBERNETES_DEFAULT",)}
    env.update(AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
               AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="2")
    deployment = production.start(dags, yaml, env)
    try:
        deployment.wait_for_dags(["params_example", "infra_scheduler_kube", "fanout_example", "recsys_seed"])
        yield deployment
    finally:
        production.stop(deployment.env)


@pytest.fixture(scope="session")
def fake_kind() -> Path:
    """The test-only target kind of tests/fake_kind, installed into a folder of its own (as a
    third-party package would be) and put on sys.path; returns that folder for PYTHONPATH."""
    target = Path(tempfile.mkdtemp(prefix="airflow-infra-fake-kind-"))
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", sys.executable, "--target", str(target), "--no-deps",
         str(REPO / "tests" / "fake_kind")],
        check=True, timeout=300,
    )
    sys.path.insert(0, str(target))
    from airflow_infra.targets import _plugins

    _plugins.cache_clear()
    yield target
    sys.path.remove(str(target))
    _plugins.cache_clear()
    shutil.rmtree(target, ignore_errors=True)
