"""The moto double's session policies on S3 (dev/moto_session_policies.py): what per-call
store credentials rely on, checked the way AWS answers, through boto3 against the server."""

from __future__ import annotations

import json
import os

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import MOTO

pytestmark = pytest.mark.integration

ACCOUNT_ROLE = "arn:aws:iam::123456789012:role/{}"


def _client(service: str, **keys):
    keys = keys or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client(service, region_name="us-east-1", endpoint_url=MOTO, **keys)


@pytest.fixture(scope="module")
def bucket(moto_s3) -> str:
    name = f"session-policies-{os.getpid()}"
    s3 = _client("s3")
    s3.create_bucket(Bucket=name)
    for key in ("mine/in.txt", "theirs/secret.txt"):
        s3.put_object(Bucket=name, Key=key, Body=b"x")
    return name


def _role(name: str, policy: dict | None) -> str:
    iam = _client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    if policy is not None:
        iam.put_role_policy(RoleName=name, PolicyName="store", PolicyDocument=json.dumps(policy))
    return ACCOUNT_ROLE.format(name)


def _session_s3(role_arn: str, policy: dict | None, token: str | None = None):
    kwargs = {"Policy": json.dumps(policy)} if policy is not None else {}
    creds = _client("sts").assume_role(RoleArn=role_arn, RoleSessionName="call", **kwargs)["Credentials"]
    return _client(
        "s3", aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=token or creds["SessionToken"],
    )


def _policy(bucket: str, actions: list[str], prefix: str, effect: str = "Allow") -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": effect, "Action": actions, "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"]}]}


def _code(call) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return err.value.response["Error"]["Code"]


def test_a_session_policy_limits_what_the_session_can_do(bucket):
    s3 = _session_s3(_role("bucket-wide", None), _policy(bucket, ["s3:GetObject", "s3:PutObject"], "mine/"))
    s3.put_object(Bucket=bucket, Key="mine/out.txt", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="mine/in.txt")["Body"].read() == b"x"
    assert s3.head_object(Bucket=bucket, Key="mine/out.txt")["ContentLength"] == 2
    assert _code(lambda: s3.put_object(Bucket=bucket, Key="theirs/secret.txt", Body=b"overwritten")) == "AccessDenied"
    assert _code(lambda: s3.get_object(Bucket=bucket, Key="theirs/secret.txt")) == "AccessDenied"
    assert _code(lambda: s3.delete_object(Bucket=bucket, Key="mine/in.txt")) == "AccessDenied"
    assert _code(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="theirs/")) == "AccessDenied"
    assert _client("s3").get_object(Bucket=bucket, Key="theirs/secret.txt")["Body"].read() == b"x"  # untouched


def test_the_role_policy_and_the_session_policy_must_both_allow(bucket):
    role = _role("reads-only", _policy(bucket, ["s3:GetObject"], ""))
    s3 = _session_s3(role, _policy(bucket, ["s3:GetObject", "s3:PutObject"], "mine/"))
    assert s3.get_object(Bucket=bucket, Key="mine/in.txt")["Body"].read() == b"x"
    assert _code(lambda: s3.put_object(Bucket=bucket, Key="mine/out2.txt", Body=b"no")) == "AccessDenied"
    denied = _session_s3(_role("bucket-wide", None), {"Version": "2012-10-17", "Statement": [
        *_policy(bucket, ["s3:*"], "")["Statement"], *_policy(bucket, ["s3:GetObject"], "theirs/", "Deny")["Statement"]]})
    assert denied.get_object(Bucket=bucket, Key="mine/in.txt")["Body"].read() == b"x"
    assert _code(lambda: denied.get_object(Bucket=bucket, Key="theirs/secret.txt")) == "AccessDenied"


def test_a_wrong_session_token_is_refused(bucket):
    s3 = _session_s3(_role("bucket-wide", None), _policy(bucket, ["s3:GetObject"], "mine/"), token="FQoGZXIvYXdzE" + "A" * 40)
    assert _code(lambda: s3.get_object(Bucket=bucket, Key="mine/in.txt")) == "InvalidToken"


def test_without_a_session_policy_moto_checks_nothing_as_before(bucket):
    s3 = _session_s3(_role("bucket-wide", None), None)
    assert s3.get_object(Bucket=bucket, Key="theirs/secret.txt")["Body"].read() == b"x"
