"""One `airflow dags test` over local, kubernetes and batch targets: the seed scenario with
fit_a in a pod (the fake Kubernetes API, a test double) and the GPU fit on AWS Batch (moto)."""

from __future__ import annotations

import pytest

from airflow_infra.client import Client
from tests.test_kubernetes import pods_left

pytestmark = pytest.mark.integration


def test_seed_scenario_spans_local_kubernetes_and_batch(dags, docker_yaml, moto_s3, batch_queue, fake_kube, seed_data):
    docker_yaml(  # appended under `targets:`
        "  k8s: {kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true}\n"
        f"  gpu: {{kind: batch, job_queue: {batch_queue}, region: us-east-1, pass_credentials: true, poll_interval: 1}}\n"
        f"artifacts: {moto_s3}\n"
        "rules:\n"
        "  - {when: \"gpu >= 1\", target: gpu}\n"
        "  - {when: \"memory >= 512Mi\", target: k8s}\n"
        "  - {target: local}\n"
    )
    run = dags.test("recsys_seed", conf={"lr": 0.3})
    assert run.succeeded, run.output[-5000:]
    stored = Client(moto_s3).run("recsys_seed", run.run_id)
    assert {t: stored[t].target for t in ("load", "fit_a", "fit_b", "ensemble")} == {
        "load": "local", "fit_a": "k8s", "fit_b": "gpu", "ensemble": "local"
    }
    assert "rule 1 'gpu >= 1' matched" in stored["fit_b"][-1].meta["routing_reason"]
    result = stored["ensemble"].result
    assert sorted(v.split(".")[0] for v in result["numpy_versions"]) == ["1", "2"]
    assert result["lr"] == [0.3, 0.3]
    assert "fit_a: least squares with numpy 1." in run.output  # from the pod's log
    assert "fit_b: gradient descent with numpy 2." in run.output  # from the job's CloudWatch log
    assert pods_left() == []
