"""Per-call store credentials (airflow_infra/targets/store_credentials.py, issue 12): the
session policy each call gets, the target settings that ask for it, and real runs on batch
(moto) and kubernetes (the fake API) where a hostile function holding the runtime's own
credentials can write nothing but its own folder and read nothing outside its DAG and inputs.
moto enforces session policies through dev/moto_session_policies.py (tests/test_moto_session_policies.py)."""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import boto3
import pytest

from airflow_infra.artifacts import ArtifactStore, path_component
from airflow_infra.client import Client
from airflow_infra.errors import InfraEnvironmentError
from airflow_infra.spec import Resources
from airflow_infra.targets import store_credentials as sc
from airflow_infra.targets.batch import BatchTarget
from airflow_infra.targets.kubernetes import KubernetesTarget
from tests.conftest import MOTO

ROLE = "arn:aws:iam::123456789012:role/airflow-infra-calls"
AWS = {"region_name": "us-east-1", "endpoint_url": MOTO, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _call(dag_id="etl", run_id="manual__2026-11-30T00:00:00+00:00", task_id="load", refs=(), timeout=None):
    store = ArtifactStore("s3://aws_default@bucket/prefix")
    folder = store.root / "/".join(map(path_component, (dag_id, run_id, task_id))) / "-1" / "1"
    return SimpleNamespace(
        dag_id=dag_id, task_id=task_id, run_id=run_id, store=store, folder=folder, folder_uri=store.uri(folder),
        refs=tuple(refs), resources=Resources(timeout=timeout), where=f"DAG {dag_id!r}, task {task_id!r}",
        log=logging.getLogger("test"),
    )


def _statements(call) -> dict[str, dict]:
    return {s["Sid"]: s for s in json.loads(sc.session_policy(call))["Statement"]}


def test_a_call_may_write_its_own_folder_and_read_its_dag_and_nothing_else():
    call = _call()
    own = "arn:aws:s3:::bucket/prefix/etl/manual__2026-11-30T00~3a00~3a00~2b00~3a00/load/-1/1/*"
    statements = _statements(call)
    assert statements["WriteOwnFolder"] == {
        "Sid": "WriteOwnFolder", "Effect": "Allow", "Action": ["s3:PutObject", "s3:AbortMultipartUpload"], "Resource": [own]}
    assert statements["ReadDagAndInputs"]["Action"] == ["s3:GetObject"]
    assert statements["ReadDagAndInputs"]["Resource"] == [own, "arn:aws:s3:::bucket/prefix/etl/*"]
    assert set(statements) == {"WriteOwnFolder", "ReadDagAndInputs"}  # no list, no delete, no condition


def test_inputs_outside_the_dag_are_readable_one_folder_each():
    shared = "s3://aws_default@bucket/prefix/other/run/t/-1/1"
    refs = [f"{shared}/out-0.pkl", f"{shared}/out-1.pkl", "s3://aws_default@bucket/prefix/etl/r/up/0/1/out-0.pkl"]
    reads = _statements(_call(refs=refs))["ReadDagAndInputs"]["Resource"]
    assert reads[1:] == ["arn:aws:s3:::bucket/prefix/etl/*", "arn:aws:s3:::bucket/prefix/other/run/t/-1/1/*"]


def test_an_input_outside_the_store_is_refused_before_any_credentials():
    from airflow_infra.errors import InfraStoreError

    for ref in ("s3://aws_default@elsewhere/prefix/x/out-0.pkl", "s3://aws_default@bucket/prefix/../x/out-0.pkl"):
        with pytest.raises(InfraStoreError):
            sc.session_policy(_call(refs=[ref]))


def test_a_policy_sts_would_refuse_is_a_clear_error_naming_the_task():
    refs = [f"s3://aws_default@bucket/prefix/dag{i}/run/t/-1/1/out-0.pkl" for i in range(40)]
    with pytest.raises(InfraEnvironmentError, match=r"DAG 'etl', task 'load': store_credentials: the call's session policy takes \d+ characters, more than the 2048 STS accepts: its inputs come from 40 folders"):
        sc.session_policy(_call(refs=refs))


def test_duration_covers_the_timeout_within_sts_limits():
    assert sc.duration(_call(), 3600) == 3600
    assert sc.duration(_call(timeout=7200), 3600) == 7800
    assert sc.duration(_call(timeout=60), 3600) == 3600
    assert sc.duration(_call(timeout=86400), 3600) == 43200


def test_session_names_are_valid_and_distinct_per_call():
    import re

    names = {sc.session_name(_call(run_id=r, task_id="t/ä" * 30)) for r in ("a", "b", "run:a", "run_a")}
    assert len(names) == 4
    assert all(re.fullmatch(r"[\w+=,.@-]{2,64}", n) for n in names)


@pytest.mark.parametrize("kind", [BatchTarget, KubernetesTarget])
@pytest.mark.parametrize("settings,error", [
    ({"store_credentials": {"role_arn": ROLE}, "pass_credentials": True}, "store_credentials and pass_credentials exclude each other"),
    ({"store_credentials": {"role_arn": ROLE + "\n"}}, "is not an IAM role ARN"),
    ({"store_credentials": {"role_arn": "arn:aws:iam::123456789012:user/bob"}}, "is not an IAM role ARN"),
    ({"store_credentials": {"role_arn": ROLE, "duration": 899}}, "greater than or equal to 900"),
    ({"store_credentials": {"role_arn": ROLE, "duration": 43201}}, "less than or equal to 43200"),
    ({"store_credentials": {"role_arn": ROLE, "policy": "*"}}, "Extra inputs are not permitted"),
    ({"store_credentials": ROLE}, "valid dictionary"),
])
def test_bad_store_credentials_settings_are_refused(kind, settings, error):
    base = {"kind": "batch", "job_queue": "q", "execution_role_arn": ROLE} if kind is BatchTarget else {"kind": "kubernetes"}
    with pytest.raises(ValueError, match=error):
        kind(**base, **settings)


def test_batch_needs_an_execution_role_to_deliver_them():
    with pytest.raises(ValueError, match="store_credentials: jobs receive them as a Secrets Manager secret.*set execution_role_arn"):
        BatchTarget(kind="batch", job_queue="q", store_credentials={"role_arn": ROLE})


def test_a_store_that_is_not_s3_is_refused_with_what_to_change():
    from airflow_infra.targets.remote import issue_store_credentials

    call = _call()
    call.store = SimpleNamespace(url="gs://bucket/prefix")
    target = KubernetesTarget(kind="kubernetes", store_credentials={"role_arn": ROLE})
    with pytest.raises(InfraEnvironmentError, match="DAG 'etl', task 'load': store_credentials are AWS credentials .* the artifact store is gs://"):
        issue_store_credentials(call, target)


# -- real runs ------------------------------------------------------------------------------


@pytest.fixture
def scoped_role(moto_s3) -> str:
    """A role the worker assumes per call, allowed everything on S3: only the session policy limits a call."""
    iam = boto3.client("iam", **AWS)
    name = f"airflow-infra-calls-{os.getpid()}"
    try:
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        iam.put_role_policy(RoleName=name, PolicyName="store", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    except iam.exceptions.EntityAlreadyExistsException:
        role = iam.get_role(RoleName=name)["Role"]["Arn"]
    return role


def _victims(moto_s3: str) -> dict[str, str]:
    """Another DAG's result and one of this DAG's from another run, written with the bucket's own keys."""
    bucket, _, prefix = moto_s3.removeprefix("s3://aws_default@").partition("/")
    s3 = boto3.client("s3", **AWS)
    victims = {}
    for name, key in (("foreign", f"{prefix}/other_dag/r/t/-1/1/out-0.pkl"), ("sibling", f"{prefix}/infra_store_scope/earlier/produce/-1/1/out-0.pkl")):
        s3.put_object(Bucket=bucket, Key=key, Body=b"precious")
        victims[name] = f"s3://{bucket}/{key}"
    return victims


def _check_scoped_run(run, moto_s3: str, victims: dict[str, str]) -> None:
    assert run.succeeded, run.output[-5000:]
    result = Client(moto_s3).run("infra_store_scope", run.run_id)["attack"].result
    assert result["sum"] == 6  # produce's result reached attack as an input: the honest path works
    assert result["credentials"] == ["key", "secret", "token"]  # the runtime had scoped credentials...
    # ...and nothing else to reach the store with: no keys in the function's environment.
    assert "AWS_ENDPOINT_URL" in result["aws_variables"]
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(result["aws_variables"])
    assert not [name for name in result["aws_variables"] if "STORE_CREDENTIALS" in name]
    assert result["read_sibling"] == "allowed"  # its own DAG's folder
    assert result["read_foreign"] == "PermissionError" and result["write_foreign"] == "PermissionError"
    assert result["write_sibling"] == "PermissionError" and result["list_bucket"] == "PermissionError"
    s3 = boto3.client("s3", **AWS)
    for uri in victims.values():
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"precious"
    assert run.output.count("store credentials for this call: role ") == 2, run.output[-3000:]
    # The credentials themselves: in no log line and no stored file but the result `attack`
    # handed them back in (and the log line showing that result).
    stolen = [value.encode() for value in result["stolen"]]
    logged = "\n".join(line for line in run.output.splitlines() if "Returned value was:" not in line).encode()
    assert all(stolen) and not [v for v in stolen if v in logged]
    bucket, _, prefix = moto_s3.removeprefix("s3://aws_default@").partition("/")
    listed = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/infra_store_scope/")
    keys = [o["Key"] for page in listed for o in page.get("Contents", [])]
    assert any(k.endswith("/attack/-1/1/call.json") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert "/attack/-1/1/out-" in key or not [v for v in stolen if v in body], key


@pytest.mark.integration
def test_a_batch_job_can_write_only_its_own_folder(dags, docker_yaml, moto_s3, batch_queue, scoped_role):
    execution_role = boto3.client("iam", **AWS).get_role(RoleName=batch_queue)["Role"]["Arn"]  # conftest's, named like the queue
    docker_yaml(
        f"  gpu: {{kind: batch, job_queue: {batch_queue}, region: us-east-1, poll_interval: 1, "
        f"execution_role_arn: '{execution_role}', store_credentials: {{role_arn: '{scoped_role}'}}}}\n"
        f"artifacts: {moto_s3}\nrules:\n  - {{target: gpu}}\n"
    )
    victims = _victims(moto_s3)
    run = dags.test("infra_store_scope", conf=victims)
    _check_scoped_run(run, moto_s3, victims)
    assert "for this call's secrets (store)" in run.output


@pytest.mark.integration
def test_a_pod_can_write_only_its_own_folder(dags, docker_yaml, moto_s3, fake_kube, scoped_role):
    docker_yaml(
        f"  k8s: {{kind: kubernetes, namespace: ml, startup_check_interval: 1, store_credentials: {{role_arn: '{scoped_role}'}}}}\n"
        f"artifacts: {moto_s3}\nrules:\n  - {{target: k8s}}\n"
    )
    victims = _victims(moto_s3)
    run = dags.test("infra_store_scope", conf=victims)
    _check_scoped_run(run, moto_s3, victims)
