"""Benchmark: --items (default 1,000) items of a small function as ONE fan-out task on moto's
AWS Batch (an array job) and on the fake Kubernetes API (an Indexed Job), --chunk (default
50) items per child: 20 children of 50. Both are test doubles that run each child as a
Docker container on this machine (moto every child at once; the fake job controller
`parallelism` at a time, here all), so the wall time says what the provider adds around
the platform here, not what a cluster would take.

Printed per target: the `airflow dags test` wall time and the fan-out task's span, the
containers the Docker engine started for the run (its events: the children, and for
Kubernetes nothing else), and the Airflow task instances (3: make_items, the fan-out,
the reduce). The sum of the results is checked against the plain computation.

Needs the Docker engine, the registry with the base image, moto and the fake Kubernetes
API (dev/start-docker.sh, dev/base-image.sh, dev/start-registry.sh, dev/push-base-image.sh,
dev/start-moto.sh, dev/start-fake-kube.sh).

    .venv/bin/python dev/bench/fan_out_remote_bench.py [--items 1000] [--chunk 50] [--only batch|kubernetes]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import boto3
import docker

from dagtest import AIRFLOW, bench_home, spans

MOTO = f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '5001')}"
KUBECONFIG = os.environ.get("FAKE_KUBECONFIG", "/tmp/airflow-infra-fake-kube.yaml")
AWS = {"region_name": "us-east-1", "endpoint_url": MOTO, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

DAG = '''
from airflow.sdk import dag
from airflow_infra import infra_task

@dag(schedule=None, dag_id="fan_out_remote")
def build():
    @infra_task
    def make_items() -> list[int]:
        return list(range({items}))

    @infra_task(memory="256Mi", cpu=0.25)
    def f(x: int) -> int:
        return sum(i * i for i in range(200)) + x * x

    @infra_task
    def total(results) -> int:
        return sum(results)

    total(f.fan_out(x=make_items(), chunk={chunk}))

build()
'''


def batch_queue() -> str:
    name = f"fan-out-bench-{os.getpid()}"
    role = boto3.client("iam", **AWS).create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    batch = boto3.client("batch", **AWS)
    env = batch.create_compute_environment(computeEnvironmentName=name, type="UNMANAGED", state="ENABLED", serviceRole=role)
    batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}])
    return name


def run(target: str, items: int, chunk: int) -> dict:
    import subprocess

    bucket = f"fan-out-bench-{os.getpid()}-{target}"
    boto3.client("s3", **AWS).create_bucket(Bucket=bucket)
    remote = (f"{{kind: batch, job_queue: {batch_queue()}, region: us-east-1, pass_credentials: true, poll_interval: 1}}"
              if target == "batch" else "{kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true}")
    certs = [os.environ["SSL_CERT_FILE"]] if os.environ.get("SSL_CERT_FILE") else []  # the machine's CA bundle, for image builds
    infra = (f"registry: 127.0.0.1:5000/fan-out-bench{os.getpid()}\nca_certificates: {certs}\ntargets:\n  remote: {remote}\n"
             f"artifacts: s3://aws_default@{bucket}/artifacts\n"
             "rules:\n  - {when: \"memory >= 256Mi\", target: remote}\n  - {target: local}\n")
    home, env = bench_home("fan-out-remote-", {"fan_out_remote.py": DAG.format(items=items, chunk=chunk)},
                           AIRFLOW_CONN_AWS_DEFAULT=json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                                                                "extra": {"region_name": "us-east-1", "endpoint_url": MOTO}}),
                           AIRFLOW_CONN_KUBERNETES_DEFAULT=json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": KUBECONFIG}}))
    (home / "infra.yaml").write_text(infra)
    engine = docker.from_env()
    # Once to build and push the image (not timed), then the timed run.
    for timed in (False, True):
        since = int(time.time())
        started = time.perf_counter()
        proc = subprocess.run([*AIRFLOW, "dags", "test", "fan_out_remote"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise SystemExit(f"{target}: the run failed:\n{output[-4000:]}")
    created = list(engine.events(since=since, until=int(time.time()) + 1, decode=True, filters={"event": "create", "type": "container"}))
    instances = output.count("[DAG TEST] starting task_id=")
    expected = sum(sum(i * i for i in range(200)) + x * x for x in range(items))
    return {"target": target, "wall": wall, "span": max(spans(output)), "containers": len(created), "instances": instances,
            "sum_ok": f"Returned value was: {expected}" in output}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--only", choices=["batch", "kubernetes"])
    args = parser.parse_args()
    rows = [run(t, args.items, args.chunk) for t in ("batch", "kubernetes") if args.only in (None, t)]
    print(f"\n{args.items} items, {args.chunk} per child ({-(-args.items // args.chunk)} children)")
    print(f"{'target':12s} {'dags test':>10s} {'longest task':>13s} {'containers':>11s} {'task instances':>15s}  sum")
    for r in rows:
        print(f"{r['target']:12s} {r['wall']:9.1f}s {r['span']:12.1f}s {r['containers']:11d} {r['instances']:15d}  "
              f"{'ok' if r['sum_ok'] else 'WRONG'}")


if __name__ == "__main__":
    main()
