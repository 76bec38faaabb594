"""Registry access: does an image exist (one HEAD on its manifest, no pull), and credentials.

Credentials come from an Airflow connection (login/password), or, for an ECR address,
from ECR's authorization token through the amazon provider.
"""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from airflow_infra.errors import InfraEnvironmentError

_ECR = re.compile(r"^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?\Z")
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass(frozen=True)
class ImageRef:
    host: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, reference: str) -> ImageRef:
        name, _, tag = reference.rpartition(":")
        host, _, repository = name.partition("/")
        if not tag or not repository or ("." not in host and ":" not in host and host != "localhost"):
            raise ValueError(f"{reference!r} is not host[:port]/repository:tag")
        return cls(host, repository, tag)

    @property
    def base_url(self) -> str:
        local = self.host.split(":")[0] in ("127.0.0.1", "localhost", "::1")
        return f"{'http' if local else 'https'}://{self.host}"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def credentials(registry_host: str, conn_id: str | None, aws_conn_id: str = "aws_default") -> Credentials | None:
    """From the `registry_conn_id` connection, else ECR's token for an ECR host, else none."""
    if conn_id:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        return Credentials(conn.login or "", conn.password or "")
    match = _ECR.match(registry_host)
    if match:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        ecr = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="ecr", region_name=match.group(1)).get_conn()
        token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
        username, _, password = base64.b64decode(token).decode().partition(":")
        return Credentials(username, password)
    return None


def manifest_exists(reference: str, creds: Credentials | None = None, timeout: float = 10.0) -> bool:
    """HEAD /v2/<repository>/manifests/<tag>: 200 means present, 404 absent; follows Bearer challenges."""
    ref = ImageRef.parse(reference)
    url = f"{ref.base_url}/v2/{ref.repository}/manifests/{urllib.parse.quote(ref.tag)}"
    headers = {"Accept": MANIFEST_TYPES}
    if creds is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    for _ in range(2):
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            challenge = exc.headers.get("WWW-Authenticate", "")
            if exc.code == 401 and challenge.lower().startswith("bearer"):
                headers["Authorization"] = "Bearer " + _bearer_token(challenge, creds, timeout)
                continue
            raise InfraEnvironmentError(f"the registry {ref.host} answered HTTP {exc.code} asking for {reference}") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out, TLS
            reason = getattr(exc, "reason", exc)
            raise InfraEnvironmentError(f"the registry {ref.host} cannot be reached ({reason}) asking for {reference}; is it up?") from None
    return False


def _bearer_token(challenge: str, creds: Credentials | None, timeout: float) -> str:
    import json

    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
    request = urllib.request.Request(f"{params['realm']}?{query}")
    if creds is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.load(response)
    return body.get("token") or body["access_token"]
