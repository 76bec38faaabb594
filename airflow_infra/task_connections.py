"""Airflow connections inside an infra task, where Airflow is not installed.

    @infra_task(connections=["warehouse", "aws_default"])
    def load():
        from airflow_infra.task_connections import connection

        c = connection("warehouse")   # conn_id, conn_type, host, login, password, port, schema,
        ...                           # extra (a dict), get_uri(); read-only

A declared `aws` connection also sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL (from its extra) for boto3 and
s3fs, unless the task's env= sets them.

The objects live in airflow_infra.runtime (standard library only), the one file shipped to
every place a task runs; there the runtime answers imports of this module itself.
"""

from __future__ import annotations

from airflow_infra.runtime import TaskConnection, connection

__all__ = ["TaskConnection", "connection"]
