"""@infra_task at parse time: TaskFlow composition and early, precise errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from airflow.sdk import DAG, Param, task
from airflow.sdk.definitions.taskgroup import TaskGroup

from airflow_infra import Environment, InfraOperator, Resources, infra_task
from airflow_infra.decorator import InfraDecoratedOperator
from airflow_infra.errors import InfraSpecError


def test_task_infra_is_infra_task():
    assert task.infra is infra_task


def test_bare_and_called_forms():
    with DAG("forms", schedule=None) as dag:

        @infra_task
        def bare():
            return 1

        @task.infra(packages=["pandas==2.2.*"], cpu=2, memory="4Gi")
        def called():
            return 2

        bare()
        called()
    ops = dag.task_dict
    assert isinstance(ops["bare"], InfraDecoratedOperator) and isinstance(ops["called"], InfraDecoratedOperator)
    assert ops["called"].packages == ["pandas==2.2.*"] and ops["called"].memory == "4Gi" and ops["called"].cpu == 2
    assert ops["bare"].memory is None and ops["bare"].target == "auto"


def test_taskflow_composition():
    with DAG("compose", schedule=None, params={"mem": Param("1Gi")}) as dag:

        @infra_task(memory="{{ params.mem }}", retries=3, retry_delay=timedelta(seconds=5), pool="default_pool")
        def load() -> list:
            return [1, 2]

        @infra_task
        def scale(x: int, factor: int) -> int:
            return x * factor

        @infra_task(multiple_outputs=True)
        def stats(values: list) -> dict:
            return {"n": len(values), "total": sum(values)}

        @infra_task(execution_timeout=timedelta(minutes=5), trigger_rule="all_done")
        def report(n: int, total: int) -> str:
            return f"{n} {total}"

        loaded = load()
        with TaskGroup("group"):
            scaled = scale.partial(factor=10).expand(x=loaded)
            pairs = scale.expand_kwargs([{"x": 1, "factor": 2}, {"x": 3, "factor": 4}])
        s = stats.override(task_id="summary", memory="2Gi", gpu=1)(scaled)
        report(s["n"], s["total"])
        pairs >> s

    ops = dag.task_dict
    assert ops["load"].retries == 3 and ops["load"].memory == "{{ params.mem }}"
    assert "memory" in type(ops["load"]).template_fields
    assert ops["group.scale"].is_mapped and ops["group.scale__1"].is_mapped
    assert ops["summary"].multiple_outputs and ops["summary"].memory == "2Gi" and ops["summary"].gpu == 1
    assert ops["report"].trigger_rule == "all_done" and ops["report"].execution_timeout == timedelta(minutes=5)
    assert {t.task_id for t in ops["report"].upstream_list} == {"summary"}
    assert {t.task_id for t in ops["summary"].upstream_list} == {"group.scale", "group.scale__1"}


def test_grouped_models_are_the_keyword_form():
    with DAG("grouped", schedule=None) as dag:

        @infra_task(environment=Environment(packages=["numpy<2"], env={"A": "1"}), resources=Resources(cpu="500m", memory="1Gi"))
        def grouped():
            pass

        @infra_task(packages=["numpy<2"], env={"A": "1"}, cpu=0.5, memory=2**30)
        def flat():
            pass

        grouped()
        flat()
    g, f = dag.task_dict["grouped"], dag.task_dict["flat"]
    assert g.resources is None  # BaseOperator's own `resources` is left alone
    for name in ("cpu", "memory", "env"):
        assert getattr(g, name) == getattr(f, name), name


def test_grouped_models_on_a_mapped_task():
    with DAG("grouped_mapped", schedule=None) as dag:

        @infra_task(resources=Resources(memory="1Gi"), environment=Environment(packages=["six"]))
        def each(x: int):
            return x

        each.expand(x=[1, 2])
    mapped = dag.task_dict["each"]
    assert mapped.partial_kwargs["memory"] == 2**30 and mapped.partial_kwargs["packages"] == ("six",)
    assert "resources" not in mapped.partial_kwargs or mapped.partial_kwargs["resources"] is None


def test_keyword_and_group_conflict():
    with DAG("conflict", schedule=None), pytest.raises(InfraSpecError, match="cpu given both"):

        @infra_task(resources=Resources(cpu=1), cpu=2)
        def twice():
            pass

        twice()


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        ({"memory": "4GB"}, "memory=", "512Mi"),
        ({"packages": ["numpy<<2"]}, "packages=", "PEP 508"),
        ({"cpu": "fast"}, "cpu=", "500m"),
        ({"python": "3.9"}, "python='3.9'", "Python"),
        ({"target": "Not A Name"}, "target='Not A Name'", "auto"),
        ({"requirements": "missing.txt"}, "requirements='missing.txt'", "relative to the DAG file"),
        ({"apt_packages": ["curl; reboot"]}, "apt_packages=", "Debian package"),
    ],
)
@pytest.mark.parametrize("form", ["call", "expand", "override"])
def test_invalid_declaration_fails_at_parse_time(kwargs, field, hint, form):
    with pytest.raises(InfraSpecError) as info, DAG("bad_dag", schedule=None):

        @infra_task
        def fit(x: int = 0):
            return x

        if form == "call":
            infra_task(**kwargs)(fit.function).override(task_id="fit")()
        elif form == "expand":
            fit.override(**kwargs).expand(x=[1, 2])
        else:
            fit.override(**kwargs)()
    message = str(info.value)
    assert "DAG 'bad_dag', task 'fit'" in message and field in message and hint in message


def test_templated_resource_is_checked_when_rendered_not_at_parse():
    with DAG("templated", schedule=None):

        @infra_task(memory="{{ params.memory }}", env={"X": "{{ ds }}"})
        def ok():
            pass

        ok()


def test_classic_operator_maps_over_resources():
    with DAG("classic", schedule=None) as dag:
        InfraOperator.partial(task_id="sized", python_callable=len, op_args=[[1]]).expand(memory=["1Gi", "2Gi"])
    assert dag.task_dict["sized"].is_mapped


def test_bad_dag_file_reports_dag_task_and_field(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "bad.py").write_text(
        textwrap.dedent(
            """
            from airflow.sdk import dag
            from airflow_infra import infra_task

            @dag(schedule=None)
            def broken():
                @infra_task(memory="lots")
                def train():
                    pass
                train()

            broken()
            """
        )
    )
    bag = DagBag(dag_folder=str(tmp_path))
    [error] = bag.import_errors.values()
    assert "DAG 'broken', task 'train'" in error and "memory='lots'" in error and "512Mi" in error


PARSE_PROBE = """
import socket, sys, time
def no_network(*a, **k):
    raise AssertionError("network used at parse time")
socket.socket.connect = no_network
socket.create_connection = no_network
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
assert bag.dags, "no DAG parsed"
heavy = sorted(m for m in ("kubernetes", "boto3", "botocore", "docker", "cloudpickle", "yaml", "s3fs") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


PLAIN_DAG = """
from airflow.sdk import dag, task

@dag(schedule=None)
def plain():
    @task
    def one():
        return 1
    one()

plain()
"""


def _parse(folder) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY=")]
    return set(filter(None, line.removeprefix("HEAVY=").split(",")))


def test_parsing_the_examples_imports_nothing_heavy_and_uses_no_network(tmp_path):
    from tests.dagrun import REPO

    (tmp_path / "plain.py").write_text(PLAIN_DAG)
    baseline = _parse(tmp_path)
    with_infra = _parse(REPO / "dags_examples")
    assert with_infra <= baseline, f"parsing @infra_task DAGs imported {with_infra - baseline} beyond plain Airflow"
    assert not with_infra & {"kubernetes", "boto3", "botocore", "docker"}


def test_context_dates_a_run_lacks_arrive_as_none():
    """A run triggered without a logical date has no logical_date or ds in its context."""
    from types import SimpleNamespace

    def fn(x: int, run_id: str, logical_date, ds=None):
        return x

    from airflow_infra.pipeline.arguments import call_arguments

    args, kwargs = call_arguments(fn, [], {"x": 1}, {"ti": SimpleNamespace(map_index=-1), "run_id": "manual__1", "params": {}}, "here")
    import inspect

    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    assert bound == {"x": 1, "run_id": "manual__1", "logical_date": None}  # ds keeps its default


@pytest.mark.parametrize(
    ("field", "valid", "hostile"),
    [
        ("apt_packages", ["curl"], ["curl\nRUN touch /pwned"]),
        ("apt_packages", ["curl"], ["curl\n"]),
        ("base_image", "python:3.11-slim", "python:3.11-slim\n"),
        ("gpu_type", "a100", "a100\n"),
        ("env", {"MODE": "x"}, {"MODE\n": "x"}),
        ("memory", "1Gi", "1Gi\nx"),
        ("target", "local", "local\n"),
    ],
)
def test_a_trailing_newline_is_refused_even_after_the_same_value_passed(field, valid, hostile):
    # Validated values are remembered per process: a value equal but for a newline must not
    # ride on the memo, and no validator's pattern may accept "name\n" (`$` would).
    with DAG("nl_dag", schedule=None):

        @infra_task
        def fit():
            return 1

        fit.override(task_id="ok", **{field: valid})()
        with pytest.raises(InfraSpecError) as info:
            fit.override(task_id="fit", **{field: hostile})()
    message = str(info.value)
    assert "DAG 'nl_dag', task 'fit'" in message and f"{field}=" in message
