"""Write the seed example's input (dags_examples/recsys_seed.py) to S3, through the same
Airflow connection the DAG's `load` task declares.

    AIRFLOW_CONN_RECSYS_DATA='{"conn_type": "aws", ...}' .venv/bin/python dev/seed_data.py [s3://bucket/key]

The connection comes from the AIRFLOW_CONN_RECSYS_DATA variable (JSON form), as Airflow reads
it; the bucket is created when missing. The data: 200 rows of y = 3*x1 - 2*x2 + 1 + noise.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sys

import boto3

DATA = "s3://airflow-infra-examples/recsys/rows.csv"


def make_rows(n: int, seed: int) -> list[tuple[float, float, float]]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        x1, x2 = rnd.uniform(-1, 1), rnd.uniform(-1, 1)
        rows.append((x1, x2, 3 * x1 - 2 * x2 + 1 + rnd.gauss(0, 0.05)))
    return rows


def s3_client(conn: dict):
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    return boto3.client(
        "s3",
        region_name=extra.get("region_name", "us-east-1"),
        endpoint_url=extra.get("endpoint_url"),
        aws_access_key_id=conn.get("login"),
        aws_secret_access_key=conn.get("password"),
    )


def main(uri: str) -> None:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise SystemExit(f"seed_data: expected s3://bucket/key, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    s3 = s3_client(json.loads(os.environ["AIRFLOW_CONN_RECSYS_DATA"]))
    existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["x1", "x2", "y"])
    writer.writerows(make_rows(200, seed=7))
    s3.put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode())
    print(f"seed data: 200 rows at {uri}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DATA)
