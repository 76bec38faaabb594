"""Airflow connections inside infra tasks (issue 18): declared, looked up when the task runs,
delivered by the local, docker, kubernetes and batch targets, and found nowhere else.

The integration tests plant distinctive values in connections through the run's
AIRFLOW_CONN_* variables (JSON form), then look for them in the artifact store, the task
log, `docker inspect`, every process's environment and command line, pods, and Batch job
definitions and job descriptions, while the call holds them and after: no hits. The function reports digests of what it saw, which must match."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from airflow.sdk import DAG

from airflow_infra import infra_task
from airflow_infra.errors import InfraSpecError, InfraTaskFailed
from airflow_infra.runtime import TaskConnection, connection_environment, install_connections
from tests.conftest import HOME, MOTO, PLANTED_CONN_SECRET


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- the API inside the task (the runtime's objects; no Airflow needed) -----------------------


def test_a_task_connection_is_plain_read_only_and_gives_airflows_uri():
    from airflow.sdk.definitions.connection import Connection

    fields = {"conn_type": "postgres", "host": "db.example", "login": "u s", "password": "p@ss/word",
              "port": 5432, "schema": "sales", "extra": {"sslmode": "require"}}
    conn = TaskConnection("warehouse", fields)
    assert (conn.conn_id, conn.host, conn.port, conn.schema, conn.extra) == ("warehouse", "db.example", 5432, "sales", {"sslmode": "require"})
    airflow = Connection(conn_id="warehouse", **{**fields, "extra": json.dumps(fields["extra"])})
    assert conn.get_uri() == airflow.get_uri()
    nested = TaskConnection("n", {"conn_type": "http", "host": "h", "extra": {"a": {"b": 1}}})
    assert nested.get_uri() == Connection(conn_id="n", conn_type="http", host="h", extra='{"a": {"b": 1}}').get_uri()
    with pytest.raises(AttributeError, match="read-only"):
        conn.password = "x"
    conn.extra["sslmode"] = "disable"
    assert conn.extra == {"sslmode": "require"}
    assert "p@ss" not in repr(conn) and "u s" not in repr(conn)


def test_an_aws_connection_gives_the_variables_client_libraries_read(monkeypatch):
    aws = {"conn_type": "aws", "login": "AKIA1", "password": "secret1",
           "extra": {"region_name": "eu-west-1", "endpoint_url": MOTO, "aws_session_token": "tok"}}
    other = {"conn_type": "aws", "login": "AKIA2", "password": "secret2", "extra": {}}
    env = connection_environment({"first": aws, "second": other, "db": {"conn_type": "postgres", "login": "x"}})
    assert env == {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "secret1", "AWS_SESSION_TOKEN": "tok",
                   "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": MOTO}
    # A variable the task's env= sets is kept: what the DAG says explicitly wins.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-2")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    try:
        install_connections({"first": aws})
        assert os.environ["AWS_DEFAULT_REGION"] == "us-east-2" and os.environ["AWS_ACCESS_KEY_ID"] == "AKIA1"
        from airflow_infra.task_connections import connection

        assert connection("first").login == "AKIA1"
        with pytest.raises(LookupError, match="'second' is not declared by this task"):
            connection("second")
    finally:
        install_connections({})
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)


# -- the declaration ---------------------------------------------------------------------------


def test_connections_are_declared_on_the_decorator_the_operator_and_the_mapped_forms():
    from airflow_infra.operator import InfraOperator

    with DAG("conns_dag", schedule=None):

        @infra_task(connections=["warehouse", "aws_default"])
        def fit(x=1):
            return x

        assert fit().operator.connections == ["warehouse", "aws_default"]
        assert fit.override(task_id="other", connections=("a.b-c",))().operator.connections == ["a.b-c"]
        assert InfraOperator(task_id="classic", python_callable=len, connections=["db"]).connections == ["db"]
        assert InfraOperator(task_id="none", python_callable=len).connections is None
        fit.expand(x=[1, 2])
        for bad_form in ("expand", "partial"):
            with pytest.raises(InfraSpecError, match="DAG 'conns_dag', task 'mapped_.*connections="):
                if bad_form == "expand":
                    fit.override(task_id="mapped_e", connections=["bad id"]).expand(x=[1])
                else:
                    InfraOperator.partial(task_id="mapped_p", python_callable=len, connections="db").expand(op_args=[[1]])
        # Mapping over connections would let data choose credentials: refused at parse time.
        mapped = InfraOperator.partial(task_id="mapped_ok", python_callable=len, connections=["db"]).expand(op_args=[[1], [2]])
        assert mapped.partial_kwargs["connections"] == ["db"]
        for mapping in (
            lambda p: p.expand(connections=[["db"], ["other"]]),
            lambda p: p.expand_kwargs([{"connections": ["db"]}]),
        ):
            partial = InfraOperator.partial(task_id="mapped_c", python_callable=len)
            with pytest.raises(InfraSpecError, match=r"DAG 'conns_dag', task 'mapped_c': connections: \.expand.*fixed in the DAG file"):
                mapping(partial)


def test_a_target_that_cannot_deliver_connections_refuses_the_call_before_anything_runs():
    from airflow_infra.pipeline.connections import require_delivery
    from airflow_infra.targets import get_kind
    from airflow_infra.targets.contract import Runner, TargetConfig

    class Silent(Runner):  # a kind that does not deliver them (delivers_connections left False)
        kind = "silent"

    with pytest.raises(InfraSpecError, match="target 'x' \\(kind 'silent'\\) cannot deliver Airflow connections to a task: its kind cannot"):
        require_delivery(Silent, TargetConfig(kind="silent"), "x", "silent", ["db"], "DAG 'd', task 't'")
    require_delivery(Silent, TargetConfig(kind="silent"), "x", "silent", [], "DAG 'd', task 't'")
    batch = get_kind("batch")
    # Batch reads a job's secrets with its execution role: a batch target without one refuses.
    with pytest.raises(InfraSpecError, match="target 'aws' \\(kind 'batch'\\) .* has no `execution_role_arn`"):
        require_delivery(batch.load_runner(), batch.schema(kind="batch", job_queue="q"), "aws", "batch", ["db"], "DAG 'd', task 't'")
    role = batch.schema(kind="batch", job_queue="q", execution_role_arn="arn:aws:iam::123456789012:role/exec")
    require_delivery(batch.load_runner(), role, "aws", "batch", ["db"], "DAG 'd', task 't'")
    for kind in ("local", "docker", "kubernetes"):
        require_delivery(get_kind(kind).load_runner(), TargetConfig(kind=kind), kind, kind, ["db"], "DAG 'd', task 't'")


def test_batch_secret_names_are_one_per_call_safe_and_injective():
    from types import SimpleNamespace

    from airflow_infra.targets.batch.secrets import secret_name

    def name(dag="d", task="t", run="manual__2026-11-29T19:45:32+00:00", map_index=-1, try_number=1):
        return secret_name(SimpleNamespace(dag_id=dag, task_id=task, run_id=run, map_index=map_index, try_number=try_number))

    assert name() == "airflow-infra/d/t/manual__2026-11-29T19@3a45@3a32+00@3a00/-1/1"
    # What Secrets Manager allows, at most 512 characters, for any run id.
    for run in ("a/b", "a@2fb", "ü ~`$(x)\n'\"", "x" * 600):
        assert re.fullmatch(r"[A-Za-z0-9/_+=.@-]{1,512}", name(run=run)), name(run=run)
    # Distinct calls, distinct names: '/' and '@' inside a part are escaped.
    names = [name(run="a/b"), name(run="a@2fb"), name(task="a", run="b"), name(run="x" * 600), name(run="x" * 601),
             name(map_index=0), name(try_number=2), name(dag="d.g"), name(dag="d_g")]
    assert len(set(names)) == len(names)


def test_a_missing_connection_is_named(monkeypatch):
    from airflow_infra.pipeline.connections import resolve_connections

    monkeypatch.setenv("AIRFLOW_CONN_PRESENT_ONE", json.dumps({"conn_type": "http", "host": "h", "password": "pw-xyz"}))
    values = resolve_connections(["present_one"], "DAG 'd', task 't'")
    assert values.document()["present_one"]["password"] == "pw-xyz" and "pw-xyz" not in repr(values)
    with pytest.raises(InfraTaskFailed, match="DAG 'd', task 't': connections: no Airflow connection 'absent_one'"):
        resolve_connections(["present_one", "absent_one"], "DAG 'd', task 't'")


# -- end to end: local and docker ----------------------------------------------------------------


def _planted() -> tuple[dict[str, str], dict[str, str]]:
    """Fresh distinctive values, and the run's AIRFLOW_CONN_* variables that carry them."""
    tag = os.urandom(5).hex()
    values = {
        "login": f"planted-login-{tag}", "password": f"planted-password-{tag}", "token": f"planted-extra-{tag}",
        "aws_key": f"PLANTEDKEY{tag.upper()}", "aws_secret": f"planted-aws-secret-{tag}", "aws_token": f"planted-aws-token-{tag}",
        "worker_aws_secret": f"planted-worker-aws-{tag}",
    }
    env = {
        "AIRFLOW_CONN_PLANTED_WAREHOUSE": json.dumps({
            "conn_type": "postgres", "host": "db.internal", "port": 5439, "schema": "sales",
            "login": values["login"], "password": values["password"], "extra": {"token": values["token"]},
        }),
        "AIRFLOW_CONN_PLANTED_AWS": json.dumps({
            "conn_type": "aws", "login": values["aws_key"], "password": values["aws_secret"],
            "extra": {"aws_session_token": values["aws_token"], "region_name": "eu-central-1", "endpoint_url": MOTO},
        }),
        # The worker's own AWS credentials: no local call may see them unless it declares an aws connection.
        "AWS_ACCESS_KEY_ID": "PLANTEDWORKERKEY", "AWS_SECRET_ACCESS_KEY": values["worker_aws_secret"],
    }
    return values, env


def _processes_holding(secrets: list[bytes], exclude: set[int]) -> tuple[list[str], list[bytes]]:
    """Every process of this machine whose environment or command line holds a secret, and
    the command lines of the processes looked at. Left out: `exclude`, and the processes the
    test itself gave the values to (the run's `airflow dags test` and what inherits its
    environment: the planting variable is there)."""
    found, looked = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            environ, cmdline = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"AIRFLOW_CONN_PLANTED_WAREHOUSE=" in environ:
            continue
        looked.append(cmdline)
        found += [f"{entry.name}: {s.decode()}" for s in secrets if s in environ or s in cmdline]
    return found, looked


def _files_holding(root: Path, secrets: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {s.decode()}" for s in secrets if s in data]
    return found


def _run_holding(dags, env: dict[str, str], look, dag_id: str = "infra_connections"):
    """Run dag_id; while its connection-reading task holds them, call look(call_pid)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(900)
    result = {}
    runner = threading.Thread(
        target=lambda: result.setdefault("run", dags.test(dag_id, conf={"port": listener.getsockname()[1]}, env=env, timeout=900))
    )
    runner.start()
    seen = None
    try:
        hold, _ = listener.accept()
        with hold:
            pid = int(hold.makefile().readline())
            try:
                seen = look(pid)
            finally:
                hold.sendall(b"x")
    finally:
        runner.join()
        listener.close()
    return result["run"], seen


def _check_run(run, values: dict[str, str], target: str) -> None:
    assert run.succeeded, run.output[-4000:]
    seen = run.result("reads_them")
    assert (seen["conn_id"], seen["conn_type"], seen["host"], seen["port"], seen["schema"]) == (
        "planted_warehouse", "postgres", "db.internal", 5439, "sales")
    assert seen["login"] == digest(values["login"]) and seen["password"] == digest(values["password"])
    assert seen["extra_token"] == digest(values["token"])
    uri = f"postgres://{values['login']}:{values['password']}@db.internal:5439/sales?token={values['token']}"
    assert seen["uri"] == digest(uri)
    assert seen["writable"] is False and seen["repr_has_password"] is False
    assert "'not_declared' is not declared by this task" in seen["undeclared"]
    assert seen["aws"] == {
        "AWS_ACCESS_KEY_ID": digest(values["aws_key"]), "AWS_SECRET_ACCESS_KEY": digest(values["aws_secret"]),
        "AWS_SESSION_TOKEN": digest(values["aws_token"]), "AWS_DEFAULT_REGION": digest("eu-central-1"),
        "AWS_ENDPOINT_URL": digest(MOTO),
    }
    assert seen["plain"] == "declared" and seen["session_password"] == digest(PLANTED_CONN_SECRET)
    none = run.result("declares_none")
    # It ran after reads_them (locally, forked from the same warm server): nothing stayed behind.
    assert "'planted_warehouse' is not declared by this task" in none["refused"]
    # No declared aws connection: not the worker's AWS credentials either, nor reads_them's.
    assert none["aws"] == dict.fromkeys(seen["aws"]), none
    assert run.call("reads_them")["connections"] == ["planted_warehouse", "planted_aws", "planted_session_db"]
    assert run.call("reads_them")["target"] == target
    assert [run.result("mapped", i) for i in (0, 1)] == [[1, digest(PLANTED_CONN_SECRET)], [2, digest(PLANTED_CONN_SECRET)]]
    secrets = [v.encode() for k, v in values.items()] + [PLANTED_CONN_SECRET.encode()]
    assert not _files_holding(run.artifacts, secrets)  # call.json, call.pkl, handle.json, outcome.json, results
    assert not _files_holding(HOME / "logs", secrets)  # the task logs
    assert not [s for s in secrets if s in run.output.encode()]  # what the run printed


@pytest.mark.integration
def test_local_calls_get_their_connections_in_memory_only(dags):
    values, env = _planted()
    secrets = [v.encode() for k, v in values.items() if k != "worker_aws_secret"]
    run, (holders, looked) = _run_holding(dags, env, lambda pid: _processes_holding(secrets, {pid}))
    # While the call held them, no other process had them in its environment or arguments:
    # not the warm runtime server every later call forks from (looked at, as it has none of
    # the worker's Airflow variables), nor anything else.
    assert holders == [], holders
    assert any(b"runtime.py\0--serve" in cmdline for cmdline in looked)
    _check_run(run, values, "local")


@pytest.mark.integration
def test_docker_calls_get_their_connections_over_stdin_never_in_docker_inspect(dags, docker_yaml):
    docker_yaml()
    values, env = _planted()
    secrets = [v.encode() for k, v in values.items() if k != "worker_aws_secret"]

    def look(_pid: int) -> dict:
        ids = subprocess.run(
            ["docker", "ps", "-q", "--filter", "label=org.airflow-infra.task=reads_them",
             "--filter", "label=org.airflow-infra.dag=infra_connections"],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        inspected = subprocess.run(["docker", "inspect", *ids], check=True, capture_output=True).stdout
        return {"ids": ids, "inspect": inspected, "processes": _processes_holding(secrets, set())[0]}

    run, seen = _run_holding(dags, {**env, "AIRFLOW_INFRA_TARGET": "docker"}, look)
    assert len(seen["ids"]) == 1, seen["ids"]
    assert not [s for s in secrets if s in seen["inspect"]]
    config = json.loads(seen["inspect"])[0]["Config"]
    assert "AIRFLOW_INFRA_CONNECTIONS=stdin" in config["Env"] and not any(e.startswith("AWS_") for e in config["Env"])
    assert seen["processes"] == [], seen["processes"]
    _check_run(run, values, "docker")


@pytest.mark.integration
def test_a_missing_connection_or_a_target_that_cannot_deliver_fails_the_task_before_anything_is_submitted(dags, docker_yaml):
    docker_yaml(
        "  aws-batch: {kind: batch, job_queue: q}\n"
        "  aws-batch-role: {kind: batch, job_queue: q, execution_role_arn: 'arn:aws:iam::123456789012:role/exec'}\n"
    )
    _, env = _planted()
    run = dags.test("infra_connections_missing", env=env)
    assert not run.succeeded
    assert "DAG 'infra_connections_missing', task 'never_runs': connections: no Airflow connection 'no_such_connection'" in run.output
    assert (
        "DAG 'infra_connections_missing', task 'on_batch': connections=['planted_session_db']: "
        "target 'aws-batch' (kind 'batch') cannot deliver Airflow connections to a task: it has no `execution_role_arn`"
    ) in run.output
    assert (
        "DAG 'infra_connections_missing', task 'missing_on_batch': connections: no Airflow connection 'no_such_connection'"
    ) in run.output
    assert not (run.artifacts / "infra_connections_missing").exists()  # no call was packaged, let alone run


@pytest.mark.integration
def test_kubernetes_calls_get_their_connections_from_a_secret_owned_by_the_pod(dags, docker_yaml, moto_s3, fake_kube):
    """A short-lived Secret per call, mounted read-only into the pod and owned by it: while the
    call holds the values, neither the pod's spec nor anything the API lists but that Secret
    holds them; when the task ends the Secret is gone."""
    import requests

    from tests.test_kubernetes import FAKE_API, pods_gone, write_kube_yaml

    write_kube_yaml(docker_yaml, moto_s3, rules="rules:\n  - {target: k8s}\n")
    values, env = _planted()
    secrets = [v.encode() for k, v in values.items() if k != "worker_aws_secret"]

    def look(_pid: int) -> dict:
        pods = requests.get(f"{FAKE_API}/api/v1/namespaces/ml/pods", timeout=5).json()["items"]
        pod = next(p for p in pods if p["metadata"]["name"].startswith("reads-them"))
        secret = requests.get(f"{FAKE_API}/api/v1/namespaces/ml/secrets/{pod['metadata']['name']}-secrets", timeout=5).json()
        return {"pod": json.dumps(pod).encode(), "spec": pod["spec"], "uid": pod["metadata"]["uid"], "secret": secret}

    run, seen = _run_holding(dags, {**env, "AIRFLOW_INFRA_TARGET": "k8s"}, look)
    assert run.succeeded, run.output[-4000:]
    assert not [s for s in secrets if s in seen["pod"]]  # not in the spec, its env or its status
    env_of_pod = {e["name"]: e.get("value") for e in seen["spec"]["containers"][0]["env"]}
    assert env_of_pod["AIRFLOW_INFRA_CONNECTIONS"] == "file:/var/run/airflow-infra/secrets/connections.json"
    assert seen["secret"]["metadata"]["ownerReferences"][0]["uid"] == seen["uid"]  # collected with the pod
    assert any(v.get("secret") for v in seen["spec"]["volumes"])
    from airflow_infra.client import Client

    stored = Client(moto_s3).run("infra_connections", run.run_id)  # the pods wrote to the S3 store
    result = stored["reads_them"].result
    assert result["password"] == digest(values["password"]) and result["login"] == digest(values["login"])
    assert result["session_password"] == digest(PLANTED_CONN_SECRET) and result["writable"] is False
    assert [stored["mapped"][i].result for i in (0, 1)] == [[1, digest(PLANTED_CONN_SECRET)], [2, digest(PLANTED_CONN_SECRET)]]
    everything = [*secrets, PLANTED_CONN_SECRET.encode()]
    assert not [s for s in everything if s in run.output.encode()]  # the task log, the operator's pod logging
    listed = requests.get(f"{FAKE_API}/api/v1/namespaces/ml/secrets/{json.loads(seen['pod'])['metadata']['name']}-secrets", timeout=5)
    assert listed.status_code == 404  # deleted when the task ended
    assert pods_gone("reads-them") and pods_gone("mapped")


def _hostile(tag: str) -> dict:
    """A connection whose values hold what breaks naive quoting: newlines, quotes, shell and
    JSON syntax, backslashes, unicode beyond the BMP. Each holds a plain marker to look for."""
    marker = f"planted-hostile-{tag}"
    return {
        "conn_type": "generic", "host": f"db.ü.example\n{marker}-host",
        "login": f"us'er \"{marker}-login\" $(id) `id` ; --",
        "password": f"line one\nline \"two\"\r\n\ttab {marker}-password \\ \\n \\u0041 ü 中文 😀 '}}{{",
        "schema": f"s;chema\nDROP {marker}-schema",
        "extra": {"token": f"{marker}-extra\n\"}}", "nested": {"ü": ["😀", "\\", None, 1.5]}},
    }


@pytest.mark.integration
def test_batch_calls_get_their_connections_from_a_secret_of_their_own(dags, docker_yaml, moto_s3, batch_queue):
    """A Secrets Manager secret per call, referenced from a job definition revision of its own,
    which Batch injects as a variable (on moto: dev/moto_server.py, the ECS agent's stand-in)
    and the runtime unsets. While the job holds them, and after: no value in any job
    definition, the job's description (its overrides, environment, parameters), the S3 store
    (call.json included), the task log; when the task ends the secret and the revision are gone."""
    from types import SimpleNamespace

    import boto3

    from airflow_infra.client import Client
    from airflow_infra.targets.batch.secrets import secret_name

    aws = {"region_name": "us-east-1", "endpoint_url": MOTO, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    batch, secretsmanager, s3 = (boto3.client(service, **aws) for service in ("batch", "secretsmanager", "s3"))
    role = boto3.client("iam", **aws).get_role(RoleName=batch_queue)["Role"]["Arn"]  # conftest's, named like the queue
    # No pass_credentials: the job's only AWS keys are the declared aws connection's.
    # Deferrable: the secret and revision are released by the attempt that resumes, from the
    # stored handle (the harder path), and it is half the time of BatchOperator's blocking wait.
    docker_yaml(
        f"  gpu: {{kind: batch, job_queue: {batch_queue}, region: us-east-1, poll_interval: 1, deferrable: true, "
        f"execution_role_arn: '{role}'}}\n"
        f"artifacts: {moto_s3}\n"
    )
    values, env = _planted()
    hostile = _hostile(values["login"].rpartition("-")[2])
    env["AIRFLOW_CONN_PLANTED_HOSTILE"] = json.dumps(hostile)
    markers = [v.encode() for v in values.values()] + [f"planted-hostile-{values['login'].rpartition('-')[2]}".encode()]

    def call_secrets() -> list[dict]:
        listed = secretsmanager.get_paginator("list_secrets").paginate(IncludePlannedDeletion=True)
        return [s for page in listed for s in page["SecretList"] if s["Name"].startswith("airflow-infra/infra_connections_batch/")]

    def definitions(status: str) -> list[dict]:
        listed = batch.get_paginator("describe_job_definitions").paginate(status=status)
        return [d for page in listed for d in page["jobDefinitions"] if d["jobDefinitionName"].startswith("airflow-infra-gpu")]

    def with_secrets(status: str) -> list[dict]:
        return [d for d in definitions(status) if d["containerProperties"].get("secrets")]

    def our_jobs() -> list[dict]:
        ids = [j["jobId"] for status in ("RUNNING", "SUCCEEDED", "FAILED")
               for j in batch.list_jobs(jobQueue=batch_queue, jobStatus=status)["jobSummaryList"]
               if j["jobName"].startswith("infra_connections_batch")]
        return batch.describe_jobs(jobs=ids)["jobs"] if ids else []

    def look(_pid: int) -> dict:
        return {"secrets": call_secrets(), "definitions": with_secrets("ACTIVE"), "jobs": our_jobs()}

    jobs_before = {j["jobId"] for j in our_jobs()}
    run, seen = _run_holding(dags, {**env, "AIRFLOW_INFRA_TARGET": "gpu"}, look, "infra_connections_batch")
    assert run.succeeded, run.output[-4000:]

    # While the job ran: one secret, named after the call, and one definition revision using it.
    call = SimpleNamespace(dag_id="infra_connections_batch", task_id="on_batch", run_id=run.run_id, map_index=-1, try_number=1)
    assert [s["Name"] for s in seen["secrets"]] == [secret_name(call)]
    assert {"Key": "airflow-infra-purpose", "Value": "call-secrets"} in seen["secrets"][0]["Tags"]
    (definition,) = seen["definitions"]
    assert definition["containerProperties"]["secrets"] == [
        {"name": "AIRFLOW_INFRA_CONNECTIONS_JSON", "valueFrom": seen["secrets"][0]["ARN"] + ":connections::"}]
    assert definition["containerProperties"]["executionRoleArn"] == role
    assert {"name": "AIRFLOW_INFRA_CONNECTIONS", "value": "env:AIRFLOW_INFRA_CONNECTIONS_JSON"} in definition["containerProperties"]["environment"]
    (job,) = [j for j in seen["jobs"] if j["jobId"] not in jobs_before]
    assert job["jobDefinition"] == definition["jobDefinitionArn"] and job["status"] == "RUNNING"

    # The function saw every value intact, the aws one as AWS_* (it read its call from S3 with them).
    result = Client(moto_s3).run("infra_connections_batch", run.run_id)["on_batch"].result
    assert (result["host"], result["port"]) == ("db.internal", 5439)
    assert (result["login"], result["password"]) == (digest(values["login"]), digest(values["password"]))
    assert result["hostile"] == {name: digest(hostile[name]) for name in ("login", "password", "host", "schema")}
    assert result["hostile_extra"] == digest(json.dumps(hostile["extra"], sort_keys=True))
    assert result["aws"] == {
        "AWS_ACCESS_KEY_ID": digest(values["aws_key"]), "AWS_SECRET_ACCESS_KEY": digest(values["aws_secret"]),
        "AWS_SESSION_TOKEN": digest(values["aws_token"]), "AWS_ENDPOINT_URL": digest(MOTO),
        "AWS_DEFAULT_REGION": digest("us-east-1"),  # the job's environment sets it: what the target says wins
    }
    # Unset before the function ran: neither it nor the processes it starts have the variable.
    assert result["variables"] == [] and result["child_variables"] == []

    # Nowhere else: the definitions (all revisions, either status), the job's description
    # (containerOverrides, environment, parameters), the S3 store, the task log.
    described = json.dumps([definitions("ACTIVE"), definitions("INACTIVE"), seen["jobs"], our_jobs()], default=str).encode()
    assert not [m for m in markers if m in described]
    assert job["parameters"] == {} and all("AIRFLOW_INFRA_CONNECTIONS_JSON" not in e["name"] for e in job["container"]["environment"])
    bucket, _, prefix = moto_s3.removeprefix("s3://aws_default@").partition("/")
    stored = [v for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=f"{prefix}/infra_connections_batch/")
              for v in page.get("Versions", [])]
    assert any(v["Key"].endswith("/call.json") for v in stored)
    for version in stored:
        body = s3.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["Body"].read()
        assert not [m for m in markers if m in body], version["Key"]
    assert not _files_holding(HOME / "logs", markers)
    assert not [m for m in markers if m in run.output.encode()]

    # Released when the task ended: the secret force-deleted, the revision deregistered.
    assert call_secrets() == []
    assert with_secrets("ACTIVE") == []
    assert definition["jobDefinitionArn"] in {d["jobDefinitionArn"] for d in with_secrets("INACTIVE")}


@pytest.mark.integration
def test_killing_a_batch_call_releases_its_secret_and_definition_revision(moto_s3):
    """A leftover secret of the same try (a crashed attempt) is updated, not duplicated.
    kill() (on_kill, a timeout) force-deletes the call's secret and deregisters its revision
    at once, from the handle alone (a fresh runner, as after a deferral); collect() after it
    finds nothing left to do."""
    from types import SimpleNamespace

    import boto3

    from airflow_infra.config import InfraConfig
    from airflow_infra.pipeline.connections import ConnectionValues
    from airflow_infra.targets.batch import BatchTarget, secrets
    from airflow_infra.targets.batch.runner import BatchRunner
    from airflow_infra.targets.contract import Handle

    aws = {"region_name": "us-east-1", "endpoint_url": MOTO, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    batch, secretsmanager = boto3.client("batch", **aws), boto3.client("secretsmanager", **aws)
    call = SimpleNamespace(dag_id="killed", task_id="t", run_id=os.urandom(4).hex(), map_index=-1, try_number=1, where="DAG 'killed', task 't'")
    name = secrets.secret_name(call)
    call.connections = ConnectionValues({"db": {"password": "first"}})
    secret = secrets.create_secret(secretsmanager, call, {"team": "ml"})
    call.connections = ConnectionValues({"db": {"password": "second"}})
    assert secrets.create_secret(secretsmanager, call, {"team": "ml"}) == secret
    held = json.loads(secretsmanager.get_secret_value(SecretId=secret)["SecretString"])
    assert held.keys() == {"connections"} and json.loads(held["connections"]) == {"db": {"password": "second"}}
    tags = {t["Key"]: t["Value"] for t in secretsmanager.describe_secret(SecretId=secret)["Tags"]}
    assert tags == {"team": "ml", "airflow-infra-purpose": "call-secrets"}
    call.connections = ConnectionValues({"db": {"password": "x" * secrets.MAX_VALUE}})
    with pytest.raises(InfraTaskFailed, match="DAG 'killed', task 't': connections: their values take .* more than the 65536"):
        secrets.create_secret(secretsmanager, call, {})
    definition = batch.register_job_definition(
        jobDefinitionName="airflow-infra-killed", type="container",
        containerProperties={"image": "x", "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}]},
    )["jobDefinitionArn"]
    target = BatchTarget(kind="batch", job_queue="q", region="us-east-1", execution_role_arn="arn:aws:iam::123456789012:role/exec")
    runner = BatchRunner("gpu", target, InfraConfig())
    handle = Handle("batch", "gpu", "", "s3://b/f", {"secret": secret, "definition": definition})
    runner.kill(handle)
    assert handle.details == {"killed": True}
    runner.collect(None, handle)  # nothing left to release
    listed = secretsmanager.list_secrets(IncludePlannedDeletion=True)["SecretList"]
    assert name not in {s["Name"] for s in listed}  # force-deleted: no recovery window
    (described,) = batch.describe_job_definitions(jobDefinitions=[definition])["jobDefinitions"]
    assert described["status"] == "INACTIVE"


def test_an_aws_connection_never_displaces_a_pods_own_identity(monkeypatch):
    """Where the call's environment has an AWS identity of its own (a service account's role, a
    Batch job role), its store access must keep using it: the connection's keys are left to
    connection(); without one they become the variables boto reads."""
    from airflow_infra.runtime import connection

    aws = {"conn_type": "aws", "login": "AKIACONN", "password": "conn-secret", "extra": {"region_name": "eu-west-1"}}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores what install_connections sets
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token")
    install_connections({"cloud": aws})
    assert "AWS_ACCESS_KEY_ID" not in os.environ and "AWS_SECRET_ACCESS_KEY" not in os.environ
    assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-1" and connection("cloud").password == "conn-secret"
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    install_connections({"cloud": aws})
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIACONN"
    install_connections({})
