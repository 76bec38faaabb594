"""The UI plugin without a running Airflow: registration, a light import, the plans it builds
from DAG files, the forked parse, and an API that refuses unauthenticated requests.

tests/test_plugin_airflow.py runs it inside a real `airflow standalone`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from airflow_infra.plugin import report
from tests.dagrun import REPO


def routing_yaml(registry: str) -> str:
    """Tasks that ask for a whole core go to a docker target (their image is looked up in
    `registry`); the params example's tasks stay on local targets. Shared with test_plugin_airflow."""
    return f"""
registry: {registry}
targets:
  docker: {{kind: docker}}
  bigmem: {{kind: local}}
rules:
  - {{when: "cpu >= 1", target: docker}}
  - {{when: "memory > 1Gi", target: bigmem}}
  - {{target: local}}
"""


ROUTING = routing_yaml("127.0.0.1:1/plugin-unit")  # nothing listens there: existence is never asked


def test_registered_as_airflow_plugin_entry_point():
    from importlib.metadata import distribution

    from airflow_infra.plugin import InfraPlugin

    [entry] = [e for e in distribution("airflow-infra").entry_points if e.group == "airflow.plugins"]
    assert entry.load() is InfraPlugin
    views = {v["destination"]: v for v in InfraPlugin.external_views}
    assert views["nav"]["href"] == "/infra/" and views["nav"]["url_route"] == "infra"
    assert views["dag"]["href"] == "/infra/?dag_id={DAG_ID}"


def test_plugin_import_is_light():
    """Every Airflow component loads plugins: importing ours must not pull in FastAPI, Docker,
    Kubernetes or the planning code (the api-server builds the app when it asks for it)."""
    code = textwrap.dedent(
        """
        import sys, time
        import airflow.plugins_manager
        before = set(sys.modules)
        start = time.perf_counter()
        import airflow_infra.plugin
        took = time.perf_counter() - start
        heavy = sorted(m for m in set(sys.modules) - before
                       if m.split(".")[0] in ("fastapi", "starlette", "docker", "kubernetes")
                       or m.startswith(("airflow_infra.pipeline", "airflow_infra.plugin.api", "airflow_infra.images")))
        print(heavy, took)
        assert not heavy, heavy
        assert took < 0.2, took  # about 1 ms here; generous for a loaded CI machine
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_plans_of_a_dag_file(infra_yaml):
    infra_yaml(ROUTING)
    path = str(REPO / "dags_examples" / "recsys_seed.py")
    found = report.plan_files({path: ["recsys_seed"]}, check=False)[path]
    plans = {p["task_id"]: p for p in found["dags"]["recsys_seed"]}
    fit_a = plans["fit_a"]
    assert (fit_a["target"], fit_a["kind"], fit_a["needs_image"]) == ("docker", "docker", True)
    assert fit_a["reason"].startswith("rule 1 'cpu >= 1' matched")
    assert fit_a["image"].startswith("127.0.0.1:1/plugin-unit/") and fit_a["exists"] is None
    assert fit_a["requested"] == {"cpu": 1.0, "memory": 512 << 20, "gpu": 0}
    assert fit_a["environment"]["packages"] == ["numpy<2"]
    load = plans["load"]
    assert (load["target"], load["needs_image"]) == ("local", False)
    assert "rule 3 (catch-all)" in load["reason"]


def test_templated_resources_are_shown_as_written(infra_yaml):
    infra_yaml(ROUTING)
    path = str(REPO / "dags_examples" / "params_example.py")
    found = report.plan_files({path: ["params_example"]}, check=True)[path]
    train = {p["task_id"]: p for p in found["dags"]["params_example"]}["train"]
    assert train["templated"] == {"memory": "{{ params.memory }}"}
    assert train["requested"] == {"cpu": 0.5, "gpu": 0, "timeout": 600.0}
    assert train["exists"] is None  # local: no existence check, no registry asked


def test_a_broken_a_hanging_and_an_exiting_dag_file_cost_only_themselves(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("from airflow.sdk import dag\nraise RuntimeError('boom at parse')\n")
    exits = tmp_path / "exits.py"
    # (DagBag skips files that mention neither "airflow" nor "dag": these do.)
    exits.write_text("import os, sys\nfrom airflow.sdk import dag\nprint('noise'); os.write(1, b'raw noise\\n')\nsys.exit(3)\n")
    good = str(REPO / "dags_examples" / "recsys_seed.py")
    found = report.plan_files({str(bad): ["broken"], str(exits): ["exits"], good: ["recsys_seed"]}, check=False)
    assert "boom at parse" in found[str(bad)]["error"]
    assert "SystemExit" in found[str(exits)]["error"]
    assert found[good]["dags"]["recsys_seed"]
    hangs = tmp_path / "hangs.py"
    hangs.write_text("import time\nfrom airflow.sdk import dag\ntime.sleep(600)\n")
    start = time.monotonic()
    found = report.plan_files({str(hangs): ["hangs"]}, check=False, timeout=5)
    assert "gave up after 5s" in found[str(hangs)]["error"] and time.monotonic() - start < 20


SNOOP = """
import json, os, sys
found = {"env": {k: v for k, v in os.environ.items()}}
try:
    from airflow.configuration import conf
    found["sql_alchemy_conn"] = conf.get("database", "sql_alchemy_conn", fallback=None)
    found["jwt_secret"] = conf.get("api_auth", "jwt_secret", fallback=None)
    found["fernet_key"] = conf.get("core", "fernet_key", fallback=None)
    found["infra_config"] = conf.get("infra", "config_file", fallback=None)
except Exception as exc:
    found["conf_error"] = repr(exc)
try:
    from airflow.sdk import Variable
    found["variable"] = Variable.get("planted_variable", default="-")
except Exception as exc:
    found["variable_error"] = repr(exc)
try:
    from airflow.sdk import BaseHook
    found["connection"] = BaseHook.get_connection("planted_conn").password
except Exception as exc:
    found["connection_error"] = repr(exc)
try:
    found["parent_environ"] = open(f"/proc/{os.getppid()}/environ", "rb").read().decode(errors="replace")
except Exception as exc:
    found["parent_environ_error"] = repr(exc)
open(OUT, "w").write(json.dumps(found, default=str))
"""


def test_dag_code_parsed_for_the_page_sees_none_of_the_api_servers_secrets(tmp_path, monkeypatch):
    secrets = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:db-s3cret@db/airflow",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-s3cret",
        "AIRFLOW__CORE__FERNET_KEY": "fernet-s3cret",
        "AIRFLOW_CONN_PLANTED_CONN": "postgresql://u:conn-s3cret@h/db",
        "AIRFLOW_VAR_PLANTED_VARIABLE": "var-s3cret",
        "AWS_SECRET_ACCESS_KEY": "aws-s3cret",
        "AIRFLOW__INFRA__CONFIG_FILE": str(tmp_path / "infra-s3cret.yaml"),
    }
    (tmp_path / "infra-s3cret.yaml").write_text("xcom_max_bytes: 1\n")
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "found.json"
    snoop = tmp_path / "snoop.py"
    snoop.write_text(f"OUT = {str(out)!r}\n" + SNOOP)
    report.plan_files({str(snoop): ["snoop"]}, check=False)
    found = out.read_text()
    for value in ("db-s3cret", "jwt-s3cret", "fernet-s3cret", "conn-s3cret", "var-s3cret", "aws-s3cret", "infra-s3cret"):
        # The parent's /proc environ is the one way left (same user): the api-server's
        # own variables, which a deployment keeps in airflow.cfg or a secrets backend.
        assert value not in found.replace(json.loads(found).get("parent_environ", ""), ""), value
    assert not any(k.startswith(("AIRFLOW_CONN", "AIRFLOW_VAR", "AWS_")) for k in json.loads(found)["env"])


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_api_refuses_requests_without_credentials():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from airflow_infra.plugin.api import create_app

    root = FastAPI()
    root.mount("/infra", create_app())
    client = TestClient(root)
    for path in ("/infra/api/plans", "/infra/api/dags/params_example/plans", "/infra/api/dags/params_example/runs"):
        assert client.get(path).status_code == 401, path
    page = client.get("/infra/")
    assert page.status_code == 200 and "static/page.js" in page.text  # the page itself holds no data
    assert client.get("/infra/static/page.js").status_code == 200
