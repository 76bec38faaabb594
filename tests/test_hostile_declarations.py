"""Hostile declarations: each is refused when the DAG file is parsed, with one clear error
naming the DAG, the task and the field: no raw traceback, no other exception type, and no
value echoed that could be a credential."""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.sdk import DAG

from airflow_infra import infra_task
from airflow_infra.errors import InfraSpecError

NEWLINE_INJECTIONS = ["x\n", "x\nRUN rm -rf /", "x\r\nFROM evil", "x\0", "\n", " x\n"]
HOSTILE: dict[str, list] = {
    "packages": [
        ["numpy<<2"], ["numpy==banana"], ["numpy~=1"], ["numpy @ file:///etc/passwd\n"], [""], [" "], [None], [1],
        [["nested"]], [{"a": 1}], ["-e ."], ["--index-url http://evil"], ["numpy; os.system('x')"],
        ["numpy\nRUN curl evil"], ["numpy\\\nRUN x"], ["num py"], ["numpy==1.0\0"], ["$(reboot)"], ["`id`"], "numpy\n",
        [b"numpy"], ["numpy==" + "9" * 5000 + "x"],
    ],
    "apt_packages": [
        ["curl\n"], ["curl\nRUN touch /pwned"], ["curl; reboot"], ["curl && id"], ["$(id)"], ["Curl"], ["-y"],
        ["--allow-unauthenticated"], [""], [None], [1], ["curl=1.0\n"], ["curl=1.0 evil"], ["c"], ["../etc"],
        [["curl"]], ["curl|sh"],
    ],
    "python": ["python3", "3", "3.11\n", "3.11; rm", "3.99", "2.7", "", "3.11.x", 3.11, ["3.11"], "3.9"],
    "base_image": [
        "UPPER/Case", "img\n", "img:tag\nRUN x", "img; rm", "img@sha256:zz", "", " ", "img:" + "t" * 200, "a b",
        "img:tag@sha256:" + "0" * 63, "--privileged", 5, ["img"],
    ],
    "env": [
        {"BAD-NAME": "x"}, {"1X": "x"}, {"X\n": "x"}, {"": "x"}, {"X": None}, {"X": ["a"]}, {"X": {"a": 1}},
        {"X": "a\0b"}, {"X": object()}, {"X": b"bytes"}, {"X": dt.datetime(2020, 1, 1)}, ["X=1"], "X=1", {1: "x"},
        {"X Y": "x"}, {"X=Y": "x"},
    ],
    "cpu": [
        "2 cores", "fast", -1, 0, "0", "0m", float("nan"), float("inf"), "1e400", 10**400, 2000, "1Gi", True, [2],
        {"n": 2}, "2\n", "", "--cpus=9999", "1e309m",
    ],
    "memory": [
        "4GB!", "lots", -1, 0, "0", 1, "1", "1Ki", "5Mi", "1e400", 10**400, float("inf"), float("nan"), "2Ei", "1Pi1",
        True, [1], "4Gi\n", "", "4 Gi B", "4Zi", "-4Gi",
    ],
    "disk": ["lots", -1, 0, "1", "1e400", "9Ei", float("inf"), "1Gi\nx", True, [1]],
    "shm": ["lots", -1, 0, "1", "1e400", float("nan"), "64Mi\n", True],
    "gpu": [-1, "one", 1.5, "1.5", True, 10**9, 65, "1\n", [1], float("inf")],
    "gpu_type": ["a100; rm", "a100\n", "", " ", "a" * 80, "../x", "a100 b", 1, ["a100"]],
    "timeout": ["soon", -1, 0, "0s", "1e400", 10**400, float("inf"), float("nan"), "1y", "1h\n", True, [1],
                dt.timedelta(0), dt.timedelta(days=400), "400d"],
    "requirements": ["", " ", "x\n", "a\0b", "missing.txt", "/etc/passwd-not-there", 5],
    "connections": [
        "warehouse", {"warehouse": 1}, 5, b"warehouse", [1], [None], [b"warehouse"], [["nested"]], [""], [" "],
        ["a" * 251], ["bad id"], ["a/b"], ["warehouse\n"], ["warehouse\r\nx"], ["x\0"], ["-x"], [".x"], ["x;rm"],
        ["$(id)"], ["`id`"], ["../x"], ["caf\u00e9"], ["warehouse", "warehouse"], ["c"] * 33,
    ],
    "on_oom": [
        "triple", 2, "double\n", "Double", "", " double", True, ["double"], {"double": 1}, b"double", 2.0,
        "{{ params.on_oom }}", "double\0", "halve",
    ],
    "target": ["Not A Name", "local\n", "a" * 80, "../x", "", "-x", 5, ["local"], None if False else "auto\n"],
}
CASES = [(field, value) for field, values in HOSTILE.items() for value in values]
CASES += [(("shm", "memory"), ("2Gi", "1Gi")), (("shm", "memory"), ("1Gi", "64Mi"))]


def _id(case) -> str:
    return f"{case[0]}={str(case[1])[:24]!r}"


def test_there_are_at_least_150_hostile_declarations():
    assert len(CASES) >= 150


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_each_hostile_declaration_is_refused_at_parse_time_naming_dag_task_and_field(case):
    fields, values = case
    if isinstance(fields, str):
        fields, values = (fields,), (values,)
    kwargs = dict(zip(fields, values))
    with DAG("hostile_dag", schedule=None):

        @infra_task
        def fit():
            return 1

        fit.override(task_id="ok", memory="1Gi", packages=["six"])()  # valid values remembered first
        with pytest.raises(InfraSpecError) as info:
            fit.override(task_id="fit", **kwargs)()
    message = str(info.value)
    assert "DAG 'hostile_dag', task 'fit'" in message
    assert any(f"{field}=" in message for field in fields), message


def test_env_values_are_never_echoed_in_an_error():
    with DAG("hostile_dag", schedule=None), pytest.raises(InfraSpecError) as info:

        @infra_task(env={"TOKEN": "s3cr3t-value", "bad-name": "also-s3cr3t"})
        def fit():
            return 1

        fit()
    assert "s3cr3t" not in str(info.value) and "bad-name" in str(info.value)


@pytest.mark.parametrize("form", ["expand", "partial"])
def test_mapped_and_classic_forms_get_the_same_checks(form):
    from airflow_infra.operator import InfraOperator

    with DAG("hostile_dag", schedule=None), pytest.raises(InfraSpecError, match="DAG 'hostile_dag', task 'fit'.*memory="):
        if form == "expand":

            @infra_task(memory="1")
            def fit(x):
                return x

            fit.expand(x=[1, 2])
        else:
            InfraOperator.partial(task_id="fit", python_callable=lambda x: x, memory="1").expand(op_args=[[1], [2]])


def test_a_dict_for_environment_is_refused_not_ignored():
    with DAG("hostile_dag", schedule=None), pytest.raises(InfraSpecError, match="task 'fit': environment=dict: give Environment"):

        @infra_task(environment={"packages": ["numpy<<2"]})
        def fit():
            return 1

        fit()


@pytest.mark.parametrize(
    "requirement",
    ["pkg @ https://user:tok3n-s3cret@example.invalid/pkg-1.0.whl", "pkg @ https://tok3n-s3cret@example.invalid/p.whl"],
)
def test_credentials_in_a_package_url_are_refused_without_echoing_them(requirement):
    with DAG("hostile_dag", schedule=None), pytest.raises(InfraSpecError) as info:

        @infra_task(packages=[requirement])
        def fit():
            return 1

        fit()
    message = str(info.value)
    assert "credentials in its URL" in message and "tok3n-s3cret" not in message, message


@pytest.mark.parametrize("declared", ["/etc/hostname", "../../../../etc/hostname", "link-out.txt"])
def test_a_requirements_file_outside_the_dags_is_refused(tmp_path, monkeypatch, declared):
    from airflow.configuration import conf

    dags = tmp_path / "dags" / "team"
    dags.mkdir(parents=True)
    (dags / "link-out.txt").symlink_to("/etc/hostname")
    monkeypatch.setattr(conf, "get", lambda *a, **k: str(tmp_path / "dags") if a[:2] == ("core", "dags_folder") else k.get("fallback"))
    with pytest.raises(InfraSpecError, match="outside the DAG file's folder and the DAGs folder"):
        with DAG("hostile_dag", schedule=None) as dag:
            dag.fileloc = str(dags / "dag.py")

            @infra_task(requirements=declared)
            def fit():
                return 1

            fit()


def test_a_requirements_file_in_the_dags_folder_is_fine_and_a_deleted_one_is_seen(tmp_path, monkeypatch):
    from airflow.configuration import conf

    dags = tmp_path / "dags"
    (dags / "team").mkdir(parents=True)
    shared = dags / "shared-reqs.txt"
    shared.write_text("six\n")
    monkeypatch.setattr(conf, "get", lambda *a, **k: str(dags) if a[:2] == ("core", "dags_folder") else k.get("fallback"))
    for present in (True, False):
        if not present:
            shared.unlink()
        with DAG("reqs_dag", schedule=None) as dag:
            dag.fileloc = str(dags / "team" / "dag.py")

            @infra_task(requirements="../shared-reqs.txt")
            def fit():
                return 1

            if present:
                fit()
            else:  # validated before in this process: the file's absence is still seen
                with pytest.raises(InfraSpecError, match="no such file"):
                    fit()


@pytest.mark.parametrize(
    "content",
    [
        "six\n--extra-index-url https://user:tok3n-s3cret@pypi.example.invalid/simple\n",
        "pkg @ https://tok3n-s3cret@example.invalid/pkg-1.0.whl\n",
        "six\n--find-links http://u:tok3n-s3cret@example.invalid/wheels\n",
    ],
)
def test_a_requirements_file_with_credentials_is_refused_before_any_build(tmp_path, content):
    from airflow_infra.config import InfraConfig
    from airflow_infra.pipeline.plan import plan_call

    (tmp_path / "reqs.txt").write_text(content)
    with pytest.raises(InfraSpecError) as info:
        plan_call({"requirements": "reqs.txt"}, "auto", InfraConfig(), dag_id="d", task_id="t", dag_file=str(tmp_path / "dag.py"))
    message = str(info.value)
    assert "DAG 'd', task 't': requirements='reqs.txt'" in message and "has credentials in a URL" in message
    assert "tok3n-s3cret" not in message
