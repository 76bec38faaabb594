"""The UI plugin without a running Airflow: registration, a light import, the plans it builds
from DAG files, the forked parse, and an API that refuses unauthenticated requests.

tests/test_plugin_airflow.py runs it inside a real `airflow standalone`.
"""

from __future__ import annotations

import os
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
    found = report.plan_file(str(REPO / "dags_examples" / "recsys_seed.py"), ["recsys_seed"], check=False)
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
    found = report.plan_file(str(REPO / "dags_examples" / "params_example.py"), ["params_example"], check=True)
    train = {p["task_id"]: p for p in found["dags"]["params_example"]}["train"]
    assert train["templated"] == {"memory": "{{ params.memory }}"}
    assert train["requested"] == {"cpu": 0.5, "gpu": 0, "timeout": 600.0}
    assert train["exists"] is None  # local: no existence check, no registry asked


def test_a_broken_dag_file_is_reported(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("from airflow.sdk import dag\nraise RuntimeError('boom at parse')\n")
    found = report.plan_file(str(bad), ["broken"], check=False)
    assert "boom at parse" in found["error"]


def test_in_child_returns_raises_and_times_out():
    assert report.in_child(lambda: {"pid": os.getpid()})["pid"] != os.getpid()
    with pytest.raises(report.ChildFailed, match="ValueError: nope"):
        report.in_child(lambda: (_ for _ in ()).throw(ValueError("nope")))
    with pytest.raises(report.ChildFailed, match="died without an answer"):
        report.in_child(lambda: os._exit(3))
    start = time.monotonic()
    with pytest.raises(report.ChildFailed, match="gave up after 0.5s"):
        report.in_child(lambda: time.sleep(30), timeout=0.5)
    assert time.monotonic() - start < 5


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
