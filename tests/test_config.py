from pathlib import Path

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


HOSTILE_YAML = [
    ("targets: {a: {kind: docker}}\ntargets: {b: {kind: docker}}\n", "the key 'targets' is given twice"),
    ("targets:\n  a: {kind: docker}\n  a: {kind: local}\n", "the key 'a' is given twice"),
    ("builder: dockr\n", "builder: 'dockr' is not a builder"),
    ("builder: [docker]\n", "builder"),
    ("ca_certificates: [/no/such/ca.pem]\n", "ca_certificates"),
    ("ca_certificates: [relative.pem]\n", "ca_certificates"),
    ("artifacts: /srv/artifacts\n", "artifacts: '/srv/artifacts' is not a URL of a supported store"),
    ("artifacts: ftp://host/x\n", "not a URL of a supported store"),
    ("artifacts: 's3://'\n", "not a URL of a supported store"),
    ("artifacts: file://relative/path\n", "absolute path"),
    ("artifacts: s3://AKIAEXAMPLE:hunter2@bucket/x\n", "password in its URL"),
    ("image_url: 'https://r/{reference.__class__}'\n", "placeholders must be among"),
    ("image_url: 'https://r/{secret}'\n", "placeholders must be among"),
    ("image_url: 'https://r/{tag!r}'\n", "placeholders must be among"),
    ("image_url: 'https://r/{tag:>99999}'\n", "placeholders must be among"),
    ("image_url: 'https://r/{'\n", "image_url"),
    ("targets: {k8s: {kind: kubernetes, dashboard_url: 'https://d/{pod}'}}\n", "placeholders must be among"),
    ("rules: [{when: '" + "(" * 200 + "gpu > 0" + ")" * 200 + "', target: local}]\n", "rules"),
    ("rules: [{when: '" + " and ".join(["gpu > 0"] * 400) + "', target: local}]\n", "rules"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("just a string\n", "the top level must be a mapping"),
    ("xcom_max_bytes: -1\n", "xcom_max_bytes"),
    ("registry: 'evil\nhost'\n", "registry"),
    ("registry: 'host/UPPER'\n", "registry"),
    ("base_image: 'img\n'\n", "base_image"),
    ("targets: {'Bad Name': {kind: docker}}\n", "target name"),
    ("targets: {a: docker}\n", "give the target's kind"),
    ("rules: [{target: nowhere}]\n", "nowhere"),
    ("rules: [{when: 'memory > lots', target: local}]\n", "rules"),
    ("rules: [{when: '__import__(\"os\")', target: local}]\n", "rules"),
    ("targets: {k8s: {kind: kubernetes, namespace: 'Bad NS'}}\n", "namespace"),
    ("targets: {b: {kind: batch}}\n", "job_queue: Field required"),
    ("targets: {d: {kind: docker, extra: 1}}\n", "extra"),
    ("registry_conn_id: 5\n", "registry_conn_id"),
    ("xcom_max_bytes: lots\n", "xcom_max_bytes"),
    ("xcom_max_bytes: 1e100\n", "xcom_max_bytes"),
    ("xcom_max_bytes: true\n", "xcom_max_bytes"),
    ("xcom_max_bytes: 999999999999\n", "xcom_max_bytes"),
    ("rules: {when: x}\n", "rules"),
    ("rules: [{when: 'gpu > 0'}]\n", "rules.0.target"),
    ("rules: [{when: 'gpu > 0', target: local, extra: 1}]\n", "rules.0.extra"),
    ('artifacts: "s3://bucket\\n"\n', "not a URL of a supported store"),
    ('artifacts: "file:///a\\0b"\n', "not a URL of a supported store"),
    ("image_url: 5\n", "image_url"),
    ("base_image: 'UPPER/x'\n", "base_image"),
    ("ca_certificates: /etc/ssl/certs/ca-certificates.crt\n", "ca_certificates"),
    ("ca_certificates: ['/etc/passwd\\n']\n", "ca_certificates"),
    ("targets: {k8s: {kind: kubernetes, pull_registry: 'bad host!'}}\n", "pull_registry"),
    ("targets: null\n", "targets"),
    ("!!python/object/apply:os.system ['id']\n", "not valid YAML"),
    ('targets: {gpu: {kind: batch, job_queue: q, region: "us-east-1\\n"}}\n', "region"),
    ("targets: {gpu: {kind: batch, job_queue: q, region: 'mars-1'}}\n", "region"),
    ("targets: {gpu: {kind: batch, job_queue: 'q;rm', region: us-east-1}}\n", "job_queue"),
    ("targets: {gpu: {kind: batch, job_queue: q, poll_interval: 0}}\n", "poll_interval"),
    ("targets: {gpu: {kind: batch, job_queue: q, execution_role_arn: 'arn:aws:iam::1:role/x'}}\n", "execution_role_arn"),
    ("targets: {gpu: {kind: batch, job_queue: q, job_role_arn: \"arn:aws:iam::123456789012:role/x\\n\"}}\n", "job_role_arn"),
    ("rules: [{when: 'memory > 1e999', target: local}]\n", "bad value for memory"),
    ("builder: ''\n", "builder"),
    ("targets: {k8s: {kind: kubernetes, image_pull_secrets: ['a b']}}\n", "image_pull_secrets"),
    ("targets: {k8s: {kind: kubernetes, service_account: 'Bad SA'}}\n", "service_account"),
    ("targets: {k8s: {kind: kubernetes, node_selector: {'a b': c}}}\n", "node_selector"),
    ("targets: {k8s: {kind: kubernetes, labels: {team: 'x y'}}}\n", "labels"),
    ("targets: {k8s: {kind: kubernetes, pod_template_file: /no/such/file.yaml}}\n", "pod_template_file"),
    ("targets: {k8s: {kind: kubernetes, startup_timeout: -5}}\n", "startup_timeout"),
    ("targets: {k8s: {kind: kubernetes, startup_check_interval: 0}}\n", "startup_check_interval"),
    ("targets: {k8s: {kind: kubernetes, startup_check_interval: 1.5}}\n", "startup_check_interval"),
    ("targets: {d: {kind: docker, network: 'host; rm'}}\n", "network"),
    ("targets: {l: {kind: local, python: /bin/sh}}\n", "python"),
    ("rules: [{when: '', target: local}]\n", "ends too early"),
    ("rules: [{when: 'cpu > 2 and', target: local}]\n", "ends too early"),
    ("rules: [{when: 'unknown_field > 1', target: local}]\n", "is not a field"),
    ("rules: [{target: local}, {when: 'gpu > 0', target: local}]\n", "rules after it never match"),
    ("registry: 'host:99999999/x'\n", "registry"),
    ("registry: 'http://host/x'\n", "registry"),
    ("image_url: 'javascript:alert(1)//{tag}'\n", "must be an http:// or https:// URL"),
    ("targets: {k8s: {kind: kubernetes, dashboard_url: 'javascript:alert(1)'}}\n", "must be an http:// or https:// URL"),
    ("targets: {k8s: {kind: kubernetes, dashboard_url: 'data:text/html,{name}'}}\n", "must be an http:// or https:// URL"),
    ("oom: {on_oom: triple}\n", "oom.on_oom"),
    ('oom: {on_oom: "double\\n"}\n', "oom.on_oom"),
    ("oom: {on_oom: 2}\n", "oom.on_oom"),
    ("oom: {max_memory: lots}\n", "oom.max_memory"),
    ("oom: {max_memory: 1Ki}\n", "oom.max_memory"),
    ("oom: {max_memory: true}\n", "oom.max_memory"),
    ("oom: {max_memory: [64Gi]}\n", "oom.max_memory"),
    ('oom: {max_memory: "64Gi\\n"}\n', "oom.max_memory"),
    ("oom: {max_memory: 9Ei}\n", "oom.max_memory"),
    ("oom: {cap: 64Gi}\n", "oom.cap"),
    ("oom: double\n", "oom"),
]


def test_the_oom_policy_loads(tmp_path):
    path = tmp_path / "infra.yaml"
    path.write_text("oom: {on_oom: double, max_memory: 64Gi}\n")
    policy = load_config(path).oom
    assert policy.on_oom == "double" and policy.max_memory == 64 << 30
    assert load_config(tmp_path / "absent.yaml").oom.on_oom is None  # off unless asked for


@pytest.mark.parametrize(("text", "message"), HOSTILE_YAML, ids=[t[:30] for t, _ in HOSTILE_YAML])
def test_hostile_config_is_refused_naming_the_file_and_field(tmp_path, text, message):
    assert len(HOSTILE_YAML) >= 60
    path = tmp_path / "infra.yaml"
    path.write_text(text)
    with pytest.raises(InfraConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value), str(info.value)
    assert "hunter2" not in str(info.value)


def test_unreadable_broken_or_odd_files_are_errors_not_defaults(tmp_path):
    import os

    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "gone.yaml")
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("builder: d\xf6cker\n".encode("latin-1"))
    for path, message in ((folder, "a directory"), (dangling, "symbolic link"), (binary, "not UTF-8")):
        with pytest.raises(InfraConfigError, match=message):
            load_config(path)
    if os.getuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text("builder: docker\n")
        locked.chmod(0)
        with pytest.raises(InfraConfigError, match="cannot be read"):
            load_config(locked)


def test_any_rewrite_is_seen_and_a_deleted_file_is_an_error(tmp_path):
    import os

    path = tmp_path / "infra.yaml"
    path.write_text("xcom_max_bytes: 10\n")
    os.utime(path, (5, 5))
    assert load_config(path).xcom_max_bytes == 10
    path.write_text("xcom_max_bytes: 20\n")
    os.utime(path, (5, 5))  # the same mtime: still a new content
    assert load_config(path).xcom_max_bytes == 20
    path.unlink()
    with pytest.raises(InfraConfigError, match="no such file"):
        load_config(path)


def test_a_configured_file_must_exist_and_a_relative_one_is_under_airflow_home(tmp_path, monkeypatch):
    from airflow.configuration import AIRFLOW_HOME

    from airflow_infra.config import config_path

    monkeypatch.setenv("AIRFLOW__INFRA__CONFIG_FILE", "conf/infra-does-not-exist.yaml")
    assert config_path() == Path(AIRFLOW_HOME) / "conf" / "infra-does-not-exist.yaml"
    with pytest.raises(InfraConfigError, match="named by \\[infra\\] config_file"):
        load_config()
