"""Runs last (file order): the secrets tests/conftest.py planted for the session appear in no
layer of any image the suite pushed to its registry namespaces, and the task env value in no
file of the artifact store."""

from __future__ import annotations

import gzip
import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import HOME, MOTO, PLANTED_CONN_SECRET, PLANTED_ENV_VALUE, PLANTED_SEED_PASSWORD, PLANTED_WORKER_SECRET

pytestmark = pytest.mark.integration
REGISTRY = "http://127.0.0.1:5000"
REGISTRY_BLOBS = Path(os.environ.get("REGISTRY_DIR", "/tmp/airflow-infra-registry")) / "data/docker/registry/v2/blobs/sha256"
SECRETS = tuple(s.encode() for s in (PLANTED_WORKER_SECRET, PLANTED_ENV_VALUE, PLANTED_CONN_SECRET, PLANTED_SEED_PASSWORD))
MANIFESTS = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def _get(path: str) -> dict:
    request = urllib.request.Request(REGISTRY + path, headers={"Accept": MANIFESTS})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def _contains(stream, needles: tuple[bytes, ...]) -> bytes | None:
    tail = b""
    while chunk := stream.read(1 << 20):
        window = tail + chunk
        for needle in needles:
            if needle in window:
                return needle
        tail = window[-64:]
    return None


def _blob_leaks(digest: str) -> bytes | None:
    blob = REGISTRY_BLOBS / digest[7:9] / digest[7:] / "data"
    with open(blob, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with gzip.open(blob) if gzipped else open(blob, "rb") as stream:
        return _contains(stream, SECRETS)


def test_no_planted_secret_in_any_layer_this_session_pushed(docker_infra):
    namespace = docker_infra.partition("/")[2]  # test<pid>, and test<pid>-dl<n> of the daemonless tests
    repositories, last = [], ""
    while page := _get(f"/v2/_catalog?n=1000&last={last}").get("repositories"):  # the registry pages by 1000
        repositories += [r for r in page if r.startswith(namespace)]
        last = page[-1]
    digests = set()
    for repository in repositories:
        for tag in _get(f"/v2/{repository}/tags/list").get("tags") or []:
            manifest = _get(f"/v2/{repository}/manifests/{tag}")
            digests |= {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    if not digests:
        pytest.skip("this session pushed no image (run it with the image tests)")
    leaks = {digest: found.decode() for digest in sorted(digests) if (found := _blob_leaks(digest))}
    assert not leaks, leaks


def test_no_task_env_value_or_connection_value_in_the_artifact_store():
    files = [f for store in HOME.rglob("artifacts") if store.is_dir() for f in store.rglob("*") if f.is_file()]
    if not files:
        pytest.skip("no call stored in this session")
    leaks = []
    for file in files:
        with open(file, "rb") as stream:
            if _contains(stream, (PLANTED_ENV_VALUE.encode(), PLANTED_CONN_SECRET.encode(), PLANTED_SEED_PASSWORD.encode())):
                leaks.append(str(file))
    assert not leaks, leaks


def _stores() -> list[str]:
    """Every artifact store this session wrote: the local ones under its home, and its
    moto bucket (tests/conftest.py's moto_s3) when it made one."""
    stores = [str(store) for store in HOME.rglob("artifacts") if store.is_dir()]
    bucket = f"airflow-infra-tests-{os.getpid()}"
    try:
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.head_bucket(Bucket=bucket)
    except Exception:  # no moto, or no bucket made this session
        return stores
    return [*stores, f"s3://aws_default@{bucket}/artifacts"]


def test_no_connection_or_env_value_in_the_s3_store_or_the_plugin_api(monkeypatch):
    """What the plugin's runs API answers for every run the session stored (S3 included), and
    every object in the session's bucket, hold none of the planted values."""
    from airflow_infra import client
    from airflow_infra.plugin import report

    planted = (PLANTED_ENV_VALUE, PLANTED_CONN_SECRET, PLANTED_SEED_PASSWORD)
    answers, objects = 0, 0
    for url in _stores():
        store_client = client.Client(url)
        monkeypatch.setattr(client, "Client", lambda url=url, real=client.Client: real(url))
        for dag_id in store_client.dags():
            answer = json.dumps(report.runs(dag_id, limit=1000), default=str)
            answers += 1
            assert not [value for value in planted if value in answer], (url, dag_id)
        monkeypatch.undo()
        if url.startswith("s3://"):
            root = store_client.store.root
            for path in root.rglob("*"):
                if path.is_file():
                    objects += 1
                    data = path.read_bytes()
                    assert not [value for value in planted if value.encode() in data], str(path)
    if not answers:
        pytest.skip("no call stored in this session")
