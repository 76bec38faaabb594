"""Session policies for moto's S3, the part of IAM that per-call store credentials rely on.
A TEST DOUBLE, loaded by dev/moto_server.py.

What AWS does: credentials from sts:AssumeRole with a `Policy` (a session policy) can do
only what both the role's policies and the session policy allow; an explicit Deny in either
wins. airflow-infra's remote targets hand each call such credentials, limited to the call's
own folder (write) and its DAG's folder and inputs (read), when `store_credentials` is set.

What moto (5.2) does: AssumeRole keeps the session policy (AssumedRole.policy) but nothing
reads it. Unless IAM checking is switched on for the whole server (INITIAL_NO_AUTH_ACTION_COUNT),
no request is checked at all; and when it is on, an assumed role's requests are checked
against the role's policies only (moto.iam.access_control.AssumedRoleAccessKey.collect_policies).

What this stand-in does, for S3 requests signed (in the Authorization header) with the
credentials of an assumed-role session that has a session policy:
  - the session token must be the session's (else InvalidToken, as moto answers);
  - the request's IAM action (moto's own mapping: a HEAD of an object is s3:GetObject) on
    its resource (arn:aws:s3:::bucket or arn:aws:s3:::bucket/key) must be allowed by the
    session policy and, when the role has policies, by them too; otherwise 403 AccessDenied,
    in S3's words. Statements are evaluated by moto's own IAMPolicy: Action/NotAction,
    Resource with * wildcards, Allow/Deny.

Where it differs from AWS: every other request (ordinary keys, sessions without a policy,
other services) stays unchecked, as in moto by default; the signature itself is not
verified (the session token is); `Condition` blocks are evaluated by moto's incomplete code
(airflow-infra's session policies have none); presigned URLs are not checked; expiry of the
session is not enforced.
"""

from __future__ import annotations

import re
from typing import Any

from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.exceptions import NotFoundException
from moto.iam.access_control import AssumedRoleAccessKey, CreateAccessKeyFailure, IAMPolicy, PermissionResult, S3IAMRequest
from moto.sts.models import sts_backends
from moto.utilities.utils import get_partition

_CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]+)/")


def _session(account_id: str, partition: str, access_key_id: str) -> Any:
    """The assumed-role session these keys belong to, if it has a session policy."""
    for role in sts_backends[account_id][partition].assumed_roles:
        if role.access_key_id == access_key_id:
            return role if role.policy else None
    return None


def _allowed(policies: list[Any], action: str, resource: str) -> bool:
    results = [IAMPolicy(policy).is_action_permitted(action, resource) for policy in policies]
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


def check(response: Any, bucket_name: str | None, key_name: str | None) -> None:
    """Raise S3's error when the request's session policy (or its role's policies) does not allow it."""
    match = _CREDENTIAL.search(response.headers.get("Authorization", ""))
    if match is None:
        return
    partition = get_partition(response.region)
    session = _session(response.current_account, partition, match.group(1))
    if session is None:
        return
    # Built for its errors (S3's words, the bucket named) and the role's policies.
    request = S3IAMRequest.__new__(S3IAMRequest)
    request._data = response.data
    try:
        access_key = AssumedRoleAccessKey(response.current_account, partition, match.group(1), response.headers)
    except CreateAccessKeyFailure as exc:
        request._raise_invalid_access_key(exc.reason)
    action = f"s3:{response._get_action()}"
    target = f"{bucket_name or '*'}/{key_name}" if key_name else (bucket_name or "*")
    resource = f"arn:{partition}:s3:::{target}"
    try:
        role_policies = access_key.collect_policies()
    except NotFoundException:  # moto lets anyone assume a role IAM does not have: it has no policies
        role_policies = []
    if not _allowed([session.policy], action, resource) or (role_policies and not _allowed(role_policies, action, resource)):
        request._raise_access_denied()


_moto_check = ActionAuthenticatorMixin._authenticate_and_authorize_s3_action


def _authenticate_and_authorize_s3_action(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
    _moto_check(self, bucket_name=bucket_name, key_name=key_name)
    check(self, bucket_name, key_name)


ActionAuthenticatorMixin._authenticate_and_authorize_s3_action = _authenticate_and_authorize_s3_action
