import pytest

from airflow_infra import Resources
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraConfigError
from airflow_infra.routing import Condition, RuleSyntaxError, route

CONFIG = InfraConfig.model_validate(
    {
        "targets": {
            "k8s": {"kind": "kubernetes", "namespace": "ml"},
            "gpu": {"kind": "batch", "job_queue": "gpu-spot"},
            "bigmem": {"kind": "batch", "job_queue": "highmem"},
        },
        "rules": [
            {"when": "gpu > 0", "target": "gpu"},
            {"when": "memory > 64Gi", "target": "bigmem"},
            {"target": "k8s"},
        ],
    }
)


@pytest.mark.parametrize(
    ("expr", "resources", "expected"),
    [
        ("gpu > 0", Resources(gpu=1), True),
        ("gpu > 0", Resources(), False),
        ("memory > 64Gi", Resources(memory="65Gi"), True),
        ("memory > 64Gi", Resources(memory="64Gi"), False),
        ("memory >= 64Gi", Resources(memory="64Gi"), True),
        ("cpu >= 4 and memory > 8Gi", Resources(cpu=4, memory="16Gi"), True),
        ("cpu >= 4 and memory > 8Gi", Resources(cpu=4, memory="4Gi"), False),
        ("cpu < 500m or gpu_type == 'a100'", Resources(cpu=2, gpu_type="a100"), True),
        ("not (gpu > 0)", Resources(), True),
        ("timeout > 1h", Resources(timeout="2h"), True),
        ("gpu_type != a100", Resources(), True),
    ],
)
def test_conditions(expr, resources, expected):
    assert Condition.compile(expr).matches(resources) is expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os').system('x')", "not a field|unexpected"),
        ("gpus > 0", "not a field"),
        ("memory > lots", "bad value for memory"),
        ("memory >", "ends too early"),
        ("(gpu > 0", "missing"),
        ("gpu_type > 'a'", "== or !="),
        ("gpu > 0 gpu", "unexpected"),
    ],
)
def test_bad_expressions_are_rejected(expr, message):
    with pytest.raises(RuleSyntaxError, match=message):
        Condition.compile(expr)


def test_first_matching_rule_wins():
    assert route(CONFIG, Resources(gpu=2, memory="128Gi"), "auto", "d", "t").target == "gpu"
    chosen = route(CONFIG, Resources(memory="128Gi"), "auto", "d", "t")
    assert chosen.target == "bigmem" and "memory > 64Gi" in chosen.reason
    assert route(CONFIG, Resources(), "auto", "d", "t").target == "k8s"


def test_pin_and_force(monkeypatch):
    assert route(CONFIG, Resources(gpu=1), "k8s", "d", "t").target == "k8s"
    monkeypatch.setenv("AIRFLOW_INFRA_TARGET", "local")
    chosen = route(CONFIG, Resources(gpu=1), "k8s", "d", "t")
    assert chosen.target == "local" and "AIRFLOW_INFRA_TARGET" in chosen.reason
    monkeypatch.setenv("AIRFLOW_INFRA_TARGET", "nowhere")
    with pytest.raises(InfraConfigError, match="nowhere"):
        route(CONFIG, Resources(), "auto", "d", "t")


def test_unknown_pin_names_the_task():
    with pytest.raises(InfraConfigError, match="DAG 'd', task 't': target='gpus'"):
        route(CONFIG, Resources(), "gpus", "d", "t")


def test_no_config_means_local():
    assert route(InfraConfig(), Resources(gpu=8), "auto", "d", "t").target == "local"


def test_rules_without_catch_all_fail_clearly():
    config = InfraConfig.model_validate({"targets": {"g": {"kind": "batch", "job_queue": "q"}}, "rules": [{"when": "gpu > 0", "target": "g"}]})
    with pytest.raises(InfraConfigError, match="no routing rule matched.*catch-all"):
        route(config, Resources(), "auto", "d", "t")
