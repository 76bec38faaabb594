"""Airflow connections inside infra tasks (issue 18). tests/test_connections.py plants their
values through AIRFLOW_CONN_* variables of the run, so that no value is in this file.

`reads_them` reports what it saw as digests, not values: its result lands in the artifact
store, where the test looks for the values and must find none. Given a port in the run's
conf, it first connects there and waits for a byte, so that the test can look at the
running call from outside (`docker inspect`, /proc) while it holds the values.
"""

from __future__ import annotations

import hashlib
import os
import socket

from airflow.sdk import dag

from airflow_infra import infra_task
from airflow_infra.task_connections import connection  # at the top: the task resolves it by reference

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def digest(value) -> str | None:
    return None if value is None else hashlib.sha256(str(value).encode()).hexdigest()


@dag(schedule=None, catchup=False, tags=["test"])
def infra_connections():
    @infra_task(connections=["planted_warehouse", "planted_aws", "planted_session_db"], env={"PLAIN": "declared"})
    def reads_them(params=None):
        if (params or {}).get("port"):
            with socket.create_connection(("127.0.0.1", int(params["port"])), timeout=600) as hold:
                hold.sendall(f"{os.getpid()}\n".encode())
                hold.recv(1)  # the test has looked
        warehouse = connection("planted_warehouse")
        try:
            warehouse.password = "changed"
            writable = True
        except AttributeError:
            writable = False
        extra = warehouse.extra
        extra["token"] = "changed"  # a copy: the connection keeps its own
        try:
            connection("not_declared")
            undeclared = "returned"
        except LookupError as exc:
            undeclared = str(exc)
        return {
            "conn_id": warehouse.conn_id,
            "conn_type": warehouse.conn_type,
            "host": warehouse.host,
            "port": warehouse.port,
            "schema": warehouse.schema,
            "login": digest(warehouse.login),
            "password": digest(warehouse.password),
            "extra_token": digest(warehouse.extra["token"]),
            "uri": digest(warehouse.get_uri()),
            "repr_has_password": warehouse.password in repr(warehouse),
            "writable": writable,
            "undeclared": undeclared,
            "aws": {name: digest(os.environ.get(name)) for name in AWS_VARIABLES},
            "plain": os.environ.get("PLAIN"),
            "session_password": digest(connection("planted_session_db").password),
        }

    @infra_task
    def declares_none():
        from airflow_infra.task_connections import connection as inside  # imported in the task: no Airflow there

        try:
            inside("planted_warehouse")
            refused = ""
        except LookupError as exc:
            refused = str(exc)
        return {"refused": refused, "aws": {name: digest(os.environ.get(name)) for name in AWS_VARIABLES}}

    @infra_task(connections=["planted_session_db"])
    def mapped(x: int):
        return [x, digest(connection("planted_session_db").password)]

    # After reads_them, in the same environment (so, locally, forked from the same warm
    # server): nothing of the earlier call's connections may have stayed behind.
    reads_them() >> declares_none()
    mapped.expand(x=[1, 2])


@dag(schedule=None, catchup=False, tags=["test"])
def infra_connections_missing():
    @infra_task(connections=["planted_warehouse", "no_such_connection"])
    def never_runs():
        return 1

    # Pinned to batch targets (tests/test_connections.py's infra.yaml has them): one without
    # the execution role Batch reads secrets with, one with it but asked for a connection that
    # does not exist. Both fail before any image, call or job.
    @infra_task(connections=["planted_session_db"], target="aws-batch")
    def on_batch():
        return 1

    @infra_task(connections=["planted_session_db", "no_such_connection"], target="aws-batch-role")
    def missing_on_batch():
        return 1

    never_runs()
    on_batch()
    missing_on_batch()


@dag(schedule=None, catchup=False, tags=["test"])
def infra_connections_batch():
    """One call on a batch target: its connections come from a Secrets Manager secret that
    Batch injects (on moto: dev/moto_server.py, the stand-in for the ECS agent). The job has
    no AWS keys of its own: it reads its call from the S3 store with the declared aws
    connection's AWS_* variables."""

    @infra_task(connections=["planted_warehouse", "planted_aws", "planted_hostile"])
    def on_batch(params=None):
        import json
        import subprocess
        import sys

        if (params or {}).get("port"):
            with socket.create_connection(("127.0.0.1", int(params["port"])), timeout=600) as hold:
                hold.sendall(f"{os.getpid()}\n".encode())
                hold.recv(1)  # the test has looked at the job, its definition and its secret
        warehouse, hostile = connection("planted_warehouse"), connection("planted_hostile")
        child = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.environ)))"], capture_output=True, text=True)
        return {
            "host": warehouse.host,
            "port": warehouse.port,
            "login": digest(warehouse.login),
            "password": digest(warehouse.password),
            "hostile": {name: digest(getattr(hostile, name)) for name in ("login", "password", "host", "schema")},
            "hostile_extra": digest(json.dumps(hostile.extra, sort_keys=True)),
            "aws": {name: digest(os.environ.get(name)) for name in AWS_VARIABLES},
            "variables": sorted(name for name in os.environ if name.startswith("AIRFLOW_INFRA")),
            "child_variables": [name for name in json.loads(child.stdout) if name.startswith("AIRFLOW_INFRA")],
        }

    on_batch()


infra_connections()
infra_connections_missing()
infra_connections_batch()
