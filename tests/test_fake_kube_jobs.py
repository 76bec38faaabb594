"""The fake Kubernetes API's batch/v1 Jobs (dev/fake_kube_jobs.py, a test double), driven by
the Kubernetes Python client and the cncf-kubernetes provider's hook as they call a cluster:
an Indexed Job's pods and their JOB_COMPLETION_INDEX, parallelism, per-index back-off
limits, the job-wide back-off limit, validation, and deletion by propagation policy.
Namespace `jobs` of its own: the other tests count the pods of `ml`."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import FAKE_KUBE_API

pytestmark = pytest.mark.integration

NS = "jobs"
IMAGE = "airflow-infra/base:bookworm"
JOBS = f"{FAKE_KUBE_API}/apis/batch/v1/namespaces/{NS}/jobs"


@pytest.fixture
def batch(fake_kube):
    from kubernetes import client, config

    api = client.BatchV1Api(config.new_client_from_config(config_file=fake_kube))
    yield api
    for job in requests.get(JOBS, timeout=10).json()["items"]:  # nothing left for the next test
        requests.delete(f"{JOBS}/{job['metadata']['name']}", json={"propagationPolicy": "Background"}, timeout=10)


def job(name: str, script: str, completions: int, parallelism: int = 1, **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"completionMode": "Indexed", "completions": completions, "parallelism": parallelism, **spec,
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,  # sleep as PID 1 ignores SIGTERM
                                       "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", script]}]}}},
    }


def pods_of(name: str) -> list[dict]:
    return requests.get(f"{FAKE_KUBE_API}/api/v1/namespaces/{NS}/pods", params={"labelSelector": f"job-name={name}"}, timeout=10).json()["items"]


def wait_ended(batch, name: str, seen_active: list[int] | None = None, within: float = 120):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = batch.read_namespaced_job_status(name, NS).status
        if seen_active is not None:
            seen_active.append(status.active or 0)
        if any(c.type in ("Complete", "Failed") and c.status == "True" for c in status.conditions or []):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {name} did not end within {within} s")


def log_of(pod: dict) -> str:
    return requests.get(f"{FAKE_KUBE_API}/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log", timeout=10).text


def test_an_indexed_job_runs_a_pod_per_index_within_its_parallelism(batch):
    batch.create_namespaced_job(NS, job("squares", 'echo "index=$JOB_COMPLETION_INDEX"', completions=5, parallelism=2))
    active: list[int] = []
    status = wait_ended(batch, "squares", active)
    assert [c.type for c in status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert (status.succeeded, status.failed, status.completed_indexes) == (5, 0, "0-4")
    assert max(active) <= 2 and status.completion_time is not None
    pods = pods_of("squares")
    indexes = sorted(int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]) for p in pods)
    assert indexes == [0, 1, 2, 3, 4]
    for pod in pods:
        meta = pod["metadata"]
        index = meta["labels"]["batch.kubernetes.io/job-completion-index"]
        assert meta["name"].startswith(f"squares-{index}-") and meta["labels"]["app"] == "squares"
        assert meta["ownerReferences"][0]["kind"] == "Job" and meta["ownerReferences"][0]["controller"] is True
        assert log_of(pod).strip() == f"index={index}"  # from the annotation, through the downward API


def test_a_failing_index_is_retried_up_to_its_own_limit_while_the_others_complete(batch):
    spec = job("shards", '[ "$JOB_COMPLETION_INDEX" != 2 ]', completions=4, parallelism=4, backoffLimitPerIndex=1)
    batch.create_namespaced_job(NS, spec)
    status = wait_ended(batch, "shards")
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert (failed.reason, status.failed_indexes, status.completed_indexes) == ("FailedIndexes", "2", "0-1,3")
    assert status.failed == 2 and status.succeeded == 3  # index 2: the first try and one retry
    twos = [p for p in pods_of("shards") if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "2"]
    assert len(twos) == 2 and all(p["status"]["phase"] == "Failed" for p in twos)  # failed pods are kept


def test_more_failures_than_the_backoff_limit_fail_the_job_and_stop_its_pods(batch):
    script = 'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then exit 1; fi; sleep 60'
    batch.create_namespaced_job(NS, job("flaky", script, completions=2, parallelism=2, backoffLimit=0))
    status = wait_ended(batch, "flaky")
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded" and status.failed == 1
    deadline = time.monotonic() + 45  # the sleeping index's pod is deleted (gracefully)
    while [p for p in pods_of("flaky") if p["status"]["phase"] not in ("Succeeded", "Failed")]:
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"completions": None}, "spec.completions: Required value: when completion mode is Indexed"),
        ({"completions": 100_001}, "must be less than or equal to 100000"),
        ({"parallelism": -1}, "spec.parallelism: Invalid value: -1"),
        ({"completionMode": "NonIndexed", "backoffLimitPerIndex": 1}, "requires indexed completion mode"),
        ({"restartPolicy": "Always"}, 'spec.template.spec.restartPolicy: Unsupported value: "Always"'),
    ],
)
def test_invalid_jobs_are_refused_as_the_api_server_refuses_them(batch, change, said):
    body = job("invalid", "true", completions=1)
    if "restartPolicy" in change:
        body["spec"]["template"]["spec"]["restartPolicy"] = change["restartPolicy"]
    else:
        body["spec"].update(change)
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    answer = requests.post(JOBS, json=body, timeout=10)
    assert answer.status_code == 422 and said in answer.json()["message"]
    assert requests.get(f"{JOBS}/invalid", timeout=10).status_code == 404


@pytest.mark.parametrize("policy", ["Foreground", "Background", "Orphan"])
def test_deleting_a_job_follows_its_propagation_policy(batch, policy):
    name = f"deleted-{policy.lower()}"
    batch.create_namespaced_job(NS, job(name, "sleep 60", completions=2, parallelism=2))
    deadline = time.monotonic() + 60
    while [p["status"]["phase"] for p in pods_of(name)] != ["Running", "Running"]:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    answer = requests.delete(f"{JOBS}/{name}", json={"propagationPolicy": policy, "gracePeriodSeconds": 1}, timeout=10)
    assert answer.status_code == 200
    listed = requests.get(f"{JOBS}/{name}", timeout=10)
    if policy == "Foreground":  # listed, being deleted, until its pods are gone
        assert listed.status_code == 200 and "deletionTimestamp" in listed.json()["metadata"]
    else:
        assert listed.status_code == 404
    deadline = time.monotonic() + 60
    if policy == "Orphan":
        time.sleep(2)
        left = pods_of(name)
        assert len(left) == 2 and all(not p["metadata"].get("ownerReferences") for p in left)
        for pod in left:
            requests.delete(f"{FAKE_KUBE_API}/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}", json={"gracePeriodSeconds": 0}, timeout=10)
        return
    while pods_of(name) or requests.get(f"{JOBS}/{name}", timeout=10).status_code != 404:
        assert time.monotonic() < deadline, f"{policy}: pods or job left"
        time.sleep(0.5)


def test_the_providers_hook_waits_for_an_indexed_job(batch):
    """KubernetesHook, as KubernetesJobOperator uses it: create, wait until complete, read success."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import ApiClient

    hook = KubernetesHook(conn_id="kubernetes_default")
    body = ApiClient()._ApiClient__deserialize(job("hooked", "true", completions=3, parallelism=3), "V1Job")
    body.metadata.namespace = NS
    hook.create_job(body)
    done = hook.wait_until_job_complete("hooked", NS, job_poll_interval=0.5)
    assert hook.is_job_successful(done) and not hook.is_job_failed(done)
    assert done.status.completed_indexes == "0-2"
