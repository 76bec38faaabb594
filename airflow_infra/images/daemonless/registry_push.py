"""The registry's HTTP API (distribution spec v2), just what pushing an image needs.

Blobs are checked (HEAD), mounted from another repository of the same registry, or
uploaded (one POST, one PUT); manifests are read and written. Authentication: Basic with
the project's credentials (ECR takes its token this way), or the Bearer token a registry's
challenge asks for, fetched once per set of scopes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from airflow_infra.errors import InfraEnvironmentError
from airflow_infra.images.registry import MANIFEST_TYPES, Credentials, ImageRef

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEXES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path | None = None  # the bytes, on disk (layers); None for blobs only mounted or in memory
    data: bytes | None = None


class RegistryClient:
    """One registry host; thread-safe for concurrent blob uploads."""

    def __init__(self, host: str, credentials: Credentials | None, timeout: float = 300.0):
        self.base_url = ImageRef(host, "x", "x").base_url
        self.credentials = credentials
        self.timeout = timeout
        self._local = threading.local()
        self._tokens: dict[tuple[str, ...], str] = {}

    @property
    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _request(self, method: str, path_or_url: str, scopes: tuple[str, ...], **kwargs: Any) -> requests.Response:
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self.base_url + path_or_url
        headers = dict(kwargs.pop("headers", {}))
        body = kwargs.pop("body", None)
        for attempt in range(2):
            auth = self._authorization(scopes)
            if auth:
                headers["Authorization"] = auth
            if hasattr(body, "seek"):
                body.seek(0)
            response = self._session.request(method, url, headers=headers, data=body, timeout=self.timeout, **kwargs)
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and challenge.lower().startswith("bearer") and attempt == 0:
                self._tokens[scopes] = self._bearer(challenge, scopes)
                continue
            return response
        return response

    def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        if scopes in self._tokens:
            return "Bearer " + self._tokens[scopes]
        if self.credentials is not None:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return None

    def _bearer(self, challenge: str, scopes: tuple[str, ...]) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if "realm" not in params:
            raise InfraEnvironmentError(f"{self.base_url} asks for a token without saying where to get it: {challenge!r}")
        query = [("service", params["service"])] if "service" in params else []
        query += [("scope", scope) for scope in scopes]
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        response = requests.get(params["realm"], params=query, auth=auth, timeout=30)
        _check(response, f"getting a token from {params['realm']}")
        body = response.json()
        return body.get("token") or body["access_token"]

    # --- reading -------------------------------------------------------------------------

    def manifest(self, repository: str, reference: str) -> tuple[dict, str]:
        """(manifest, media type); an index is resolved to this machine's linux platform."""
        scopes = (f"repository:{repository}:pull",)
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}", scopes, headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            raise InfraEnvironmentError(f"{self.base_url}/{repository}:{reference} does not exist in the registry")
        _check(response, f"reading the manifest of {repository}:{reference}")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        manifest = response.json()
        media_type = manifest.get("mediaType", media_type)
        if media_type in INDEXES:
            return self.manifest(repository, _platform_entry(manifest, f"{repository}:{reference}"))
        return manifest, media_type

    def blob_bytes(self, repository: str, digest: str) -> bytes:
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", (f"repository:{repository}:pull",))
        _check(response, f"reading blob {digest} of {repository}")
        if "sha256:" + hashlib.sha256(response.content).hexdigest() != digest:
            raise InfraEnvironmentError(f"blob {digest} of {repository} arrived with other content")
        return response.content

    # --- writing -------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", (f"repository:{repository}:pull,push",))
        if response.status_code == 404:
            return False
        _check(response, f"checking blob {digest} in {repository}")
        return True

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Link a blob another repository of this registry holds; False when the registry declined."""
        scopes = (f"repository:{repository}:pull,push", f"repository:{source}:pull")
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/", scopes, params={"mount": digest, "from": source})
        if response.status_code == 201:
            return True
        _check(response, f"mounting blob {digest} from {source} into {repository}")
        # 202: an upload session was opened instead; cancel it, nothing was written.
        location = response.headers.get("Location")
        if location:
            self._request("DELETE", self._absolute(location), (f"repository:{repository}:pull,push",))
        return False

    def upload_blob(self, repository: str, blob: Blob) -> None:
        """One monolithic upload: POST opens a session, PUT with the digest completes it."""
        scopes = (f"repository:{repository}:pull,push",)
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/", scopes)
        _check(response, f"starting the upload of {blob.digest} to {repository}")
        location = self._absolute(response.headers["Location"])
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        if blob.path is not None:
            with open(blob.path, "rb") as body:
                response = self._request("PUT", location, scopes, params={"digest": blob.digest}, headers=headers, body=body)
        else:
            response = self._request("PUT", location, scopes, params={"digest": blob.digest}, headers=headers, body=blob.data)
        _check(response, f"uploading blob {blob.digest} ({blob.size} bytes) to {repository}")

    def put_manifest(self, repository: str, tag: str, manifest: bytes, media_type: str) -> None:
        scopes = (f"repository:{repository}:pull,push",)
        response = self._request(
            "PUT", f"/v2/{repository}/manifests/{tag}", scopes, headers={"Content-Type": media_type}, body=manifest
        )
        _check(response, f"writing the manifest {repository}:{tag}")

    def _absolute(self, location: str) -> str:
        return location if location.startswith(("http://", "https://")) else self.base_url + location


def _platform_entry(index: dict, name: str) -> str:
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    for entry in index.get("manifests", []):
        wanted = entry.get("platform", {})
        if wanted.get("os") == "linux" and wanted.get("architecture") == arch and _DIGEST.match(entry.get("digest", "")):
            return entry["digest"]
    raise InfraEnvironmentError(f"{name} has no linux/{arch} image")


def _check(response: requests.Response, doing: str) -> None:
    if response.status_code >= 400:
        try:
            detail = json.dumps(response.json().get("errors", response.text))[:500]
        except ValueError:
            detail = response.text[:500]
        raise InfraEnvironmentError(f"{doing} failed: HTTP {response.status_code} {detail}")
