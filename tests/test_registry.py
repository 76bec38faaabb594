"""Registry existence checks and credentials against a small token-auth registry double."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_infra.images.registry import Credentials, ImageRef, credentials, manifest_exists


class TokenRegistry(BaseHTTPRequestHandler):
    """Answers like a registry behind token auth: 401 + Bearer challenge, a token endpoint, manifests."""

    present = {"/v2/ml/airflow-infra-env/manifests/abc"}

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # the token endpoint
        expected = "Basic " + base64.b64encode(b"robot:s3cret").decode()
        if self.path.startswith("/token?") and self.headers.get("Authorization") == expected and "scope=" in self.path:
            body = json.dumps({"token": "tok-123"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(403)
            self.end_headers()

    def do_HEAD(self):
        if self.headers.get("Authorization") != "Bearer tok-123":
            host = f"127.0.0.1:{self.server.server_address[1]}"
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                f'Bearer realm="http://{host}/token",service="registry",scope="repository:ml/airflow-infra-env:pull"',
            )
            self.end_headers()
            return
        self.send_response(200 if self.path in self.present else 404)
        self.end_headers()


@pytest.fixture
def registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bearer_challenge_is_followed(registry):
    creds = Credentials("robot", "s3cret")
    assert manifest_exists(f"{registry}/ml/airflow-infra-env:abc", creds) is True
    assert manifest_exists(f"{registry}/ml/airflow-infra-env:missing", creds) is False


def test_wrong_credentials_fail_loudly(registry):
    with pytest.raises(Exception, match="403"):
        manifest_exists(f"{registry}/ml/airflow-infra-env:abc", Credentials("robot", "wrong"))


def test_credentials_from_an_airflow_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MY_REGISTRY", json.dumps({"conn_type": "generic", "login": "robot", "password": "s3cret"}))
    assert credentials("127.0.0.1:5000", "my_registry") == Credentials("robot", "s3cret")
    assert credentials("127.0.0.1:5000", None) is None


@pytest.mark.parametrize("bad", ["no-tag-here", "repo:tag", "localhost"])
def test_references_need_a_registry_host(bad):
    with pytest.raises(ValueError):
        ImageRef.parse(bad)


@pytest.mark.parametrize("builder", ["docker", "daemonless"])
def test_a_registry_that_is_down_is_one_clear_error(builder, tmp_path):
    from airflow_infra import Environment
    from airflow_infra.config import InfraConfig
    from airflow_infra.errors import InfraEnvironmentError
    from airflow_infra.images.service import ensure_image, plan_image

    config = InfraConfig(registry="127.0.0.1:1/ml", builder=builder)  # nothing listens on port 1
    plan = plan_image(Environment(packages=["six"]), None, config)
    with pytest.raises(InfraEnvironmentError, match=r"the registry 127.0.0.1:1 cannot be reached \(.*refused.*\).*is it up\?"):
        ensure_image(plan, config, lambda line: None)
