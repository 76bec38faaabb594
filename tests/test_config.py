import pytest

from airflow_infra.config import InfraConfig, load_config
from airflow_infra.errors import InfraConfigError
from airflow_infra.targets.local import LocalTarget

DESIGN_EXAMPLE = """
registry: 123456789012.dkr.ecr.us-east-1.amazonaws.com/ml
builder: docker
artifacts: s3://ml-artifacts/airflow-infra
targets:
  k8s:      {kind: kubernetes, namespace: ml, kubernetes_conn_id: kubernetes_default}
  gpu:      {kind: batch, job_queue: gpu-spot, aws_conn_id: aws_default}
  bigmem:   {kind: batch, job_queue: highmem}
  laptop:   {kind: local}
  docker:   {kind: docker}
rules:
  - {when: "gpu > 0", target: gpu}
  - {when: "memory > 64Gi", target: bigmem}
  - {target: k8s}
"""


def test_design_example_loads(tmp_path):
    path = tmp_path / "infra.yaml"
    path.write_text(DESIGN_EXAMPLE)
    config = load_config(path)
    assert set(config.targets) == {"k8s", "gpu", "bigmem", "laptop", "docker", "local"}
    assert config.targets["gpu"].job_queue == "gpu-spot"
    assert config.artifacts == "s3://ml-artifacts/airflow-infra"
    assert [r.target for r in config.rules] == ["gpu", "bigmem", "k8s"]


def test_missing_file_means_builtin_local(tmp_path):
    config = load_config(tmp_path / "absent.yaml")
    assert config.targets == {"local": LocalTarget()}
    assert config.rules == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("targets: {k8s: {kind: kubernetes, namespce: ml}}", "namespce"),
        ("targets: {x: {kind: mainframe}}", "kind"),
        ("rules: [{when: 'gpu > 0', target: nowhere}]", "nowhere"),
        ("rules: [{when: 'gpu >> 0', target: local}]", "gpu >> 0"),
        ("colour: blue", "colour"),
        ("targets: {local: {kind: docker}}", "reserved"),
        ("targets: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_problem(tmp_path, text, message):
    path = tmp_path / "infra.yaml"
    path.write_text(text)
    with pytest.raises(InfraConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_reload_on_change(tmp_path):
    path = tmp_path / "infra.yaml"
    path.write_text("xcom_max_bytes: 10\n")
    assert load_config(path).xcom_max_bytes == 10
    import os

    path.write_text("xcom_max_bytes: 20\n")
    os.utime(path, (1, 1))
    assert load_config(path).xcom_max_bytes == 20


def test_defaults():
    assert InfraConfig().builder == "docker"
