"""Images from declarations, with a real Docker engine and a real registry."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from airflow_infra import Environment
from airflow_infra.config import load_config
from airflow_infra.images.service import ensure_image, image_exists, plan_image
from tests.dagrun import REPO

pytestmark = pytest.mark.integration


def test_build_push_and_existence_check(docker_yaml):
    registry = docker_yaml()
    config = load_config()
    plan = plan_image(Environment(packages=["six==1.16.0"], apt_packages=["curl"]), None, config)
    assert plan.reference.startswith(f"{registry}/airflow-infra-env:")
    assert not image_exists(plan.reference, config)
    logs: list[str] = []
    assert ensure_image(plan, config, logs.append) is True
    assert any("Successfully built" in line for line in logs) and any("push:" in line for line in logs)
    started = time.perf_counter()
    assert image_exists(plan.reference, config)  # a HEAD on the registry's manifest
    assert time.perf_counter() - started < 1.0
    assert ensure_image(plan, config, logs.append) is False  # unchanged: nothing built


def test_tags_follow_content_only():
    config = load_config()

    def tag(**declared) -> str:
        return plan_image(Environment(**declared), None, config).recipe.tag

    assert tag(packages=["six==1.16.0", "NumPy<2"]) == tag(packages=["numpy <2", "six==1.16.0"])
    assert tag(packages=["six==1.16.0"]) != tag(packages=["six==1.17.0"])
    assert tag(packages=["six==1.16.0"], env={"A": "1"}) == tag(packages=["six==1.16.0"])  # runtime only
    assert tag(packages=["six"], apt_packages=["curl"]) != tag(packages=["six"])
    dockerfile = plan_image(Environment(packages=["six"]), None, config).recipe.dockerfile()
    assert "airflow" not in dockerfile.lower().replace("airflow-infra", "")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow_infra.cli", *args], capture_output=True, text=True, timeout=900)


def test_five_tasks_two_environments_build_two_images(docker_yaml):
    docker_yaml("rules:\n  - {target: docker}\n")
    dag_file = str(REPO / "tests" / "dags" / "infra_images.py")
    first = cli("build", dag_file)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "images: 2 built, 0 already present, 0 failed" in first.stdout
    again = cli("build", dag_file)
    assert "images: 0 built, 2 already present, 0 failed" in again.stdout
    plan = cli("plan", dag_file)
    assert plan.returncode == 0 and plan.stdout.count("(exists)") == 5
    assert "target: docker (docker): rule 1 (catch-all) matched" in plan.stdout


def test_builder_none_names_task_tag_and_command(dags, docker_yaml):
    docker_yaml("builder: none\n", namespace="-empty")  # a registry namespace nothing was pushed to
    run = dags.test("infra_images", env={"AIRFLOW_INFRA_TARGET": "docker"})
    assert not run.succeeded
    assert "task 'a_0'" in run.output and "does not exist and builder is 'none'" in run.output
    assert "airflow-infra build DAG_FILE" in run.output and "airflow-infra-env:" in run.output


@pytest.mark.fault
def test_docker_target_limits_and_clean_image(dags, docker_yaml):
    docker_yaml()
    planted = dags.home / "infra" / "artifacts" / "other_dag" / "secret.txt"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text("another DAG's result")
    run = dags.test("infra_docker_limits", env={"AIRFLOW_INFRA_TARGET": "docker"})
    assert run.result("shm_size") == 64 * 2**20
    assert "task 'oom': out of memory: the task hit its memory limit of 128Mi" in run.output
    # on_oom: the container killed for memory is retried with double the memory, by Airflow's retry.
    assert "task 'oom_grows': out of memory: the task hit its memory limit of 64Mi" in run.output
    assert "the Docker engine reports State.OOMKilled" in run.output
    assert run.result("oom_grows") == 90 << 20
    escalated = run.call("oom_grows")
    assert escalated["try_number"] == 2 and escalated["resources"]["memory"] == 128 << 20 and escalated["target"] == "docker"
    assert escalated["escalated"]["from"] == "64Mi" and escalated["escalated"]["after_try"] == 1
    who = run.result("whoami")
    assert who["airflow"] is False and who["env"] == []  # no Airflow, no settings or secrets inside
    assert who["token_arrived"] is True
    import os

    assert who["uid"] == os.getuid()  # outputs are written as the worker's user
    # The container sees its own call's folder (rw) and its inputs (ro), not the rest of the
    # store: another DAG's file is neither visible nor writable, and nothing it writes
    # outside its folder reaches the host.
    reach = run.result("reach")
    assert reach["input_bytes"] == 2 << 20 and reach["write_own"] == "allowed"
    assert reach["root_listing"] == ["infra_docker_limits"], reach
    assert reach["read_other"] != "allowed" and reach["write_other"] != "allowed"
    assert reach["overwrite_input"] == "OSError"  # mounted read-only
    assert (run.artifacts / "other_dag" / "secret.txt").read_text() == "another DAG's result"
    assert not list(run.artifacts.rglob("planted.txt"))
    # The OOM-killed container and every other one of the run are gone (collect removes them).
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=org.airflow-infra.dag=infra_docker_limits"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert left == []


GPU_ELSEWHERE = 'rules:\n  - {when: "gpu >= 1", target: local}\n  - {target: docker}\n'


@pytest.mark.parametrize(("dag_id", "conf"), [("recsys_seed", {"lr": 0.2}), ("fanout_example", {"n_shards": 3}), ("params_example", None)])
def test_examples_on_the_docker_target(dags, docker_yaml, dag_id, conf, seed_data):
    # The engine here has no GPU runtime, so the docker target refuses a task that asks for a
    # GPU (recsys_seed's fit_b): that one goes to the local target, which runs it on the CPU.
    docker_yaml(GPU_ELSEWHERE)
    run = dags.test(dag_id, conf=conf)
    assert run.succeeded, run.output[-4000:]
    last = {"recsys_seed": "ensemble", "fanout_example": "merge", "params_example": "report"}[dag_id]
    assert run.call(last)["target"] == "docker"
    if dag_id == "recsys_seed":
        assert sorted(v.split(".")[0] for v in run.result("ensemble")["numpy_versions"]) == ["1", "2"]
        assert run.call("fit_a")["target"] == "docker" and run.call("fit_b")["target"] == "local"
    if dag_id == "fanout_example":
        assert run.result("merge") and run.call("count_words", 2)["target"] == "docker"


def test_plan_of_local_tasks_needs_no_docker_engine(infra_yaml):
    """Only targets that run images ask about images: with no engine reachable (and no
    registry), a DAG routed to local targets still plans, and the command exits 0."""
    infra_yaml("targets:\n  bigmem: {kind: local}\nrules:\n  - {when: 'memory > 1Gi', target: bigmem}\n  - {target: local}\n")
    dag_file = str(REPO / "tests" / "dags" / "infra_images.py")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    plan = subprocess.run(
        [sys.executable, "-m", "airflow_infra.cli", "plan", dag_file], capture_output=True, text=True, timeout=300, env=env
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "error" not in plan.stdout and "Docker" not in plan.stdout
    assert plan.stdout.count("target: local (local): rule 2 (catch-all) matched") == 5
    assert plan.stdout.count("a local target runs without an image") == 5
