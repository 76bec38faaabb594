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

from tests.conftest import HOME, PLANTED_CONN_SECRET, PLANTED_ENV_VALUE, PLANTED_SEED_PASSWORD, PLANTED_WORKER_SECRET

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
