"""@task.infra behaves as @task where users look: logging, async functions, Airflow's own
types as arguments, templates_dict, context values, get_current_context, quiet links
(the real `airflow dags test`, local target)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(dags):
    return dags.test("infra_taskflow")


def test_log_records_keep_their_level_and_logger(run):
    assert run.result("logs") == "logged"
    assert re.search(r"\[info\s*\] my\.module: info from the function", run.output)
    assert re.search(r"\[warning\s*\] my\.module: a warning from the function", run.output)
    assert re.search(r"\[info\s*\] airflow\.task: on airflow\.task", run.output)
    assert "debug is below the level" not in run.output  # the task log's level applies
    assert re.search(r"\[info\s*\] printed as ever", run.output)


def test_async_functions_are_awaited(run):
    assert run.result("awaited") == 42
    assert "never awaited" not in run.output


def test_airflow_types_in_arguments_arrive_plain(run):
    assert run.result("plain_types") == {
        "when": ["datetime", "2024-03-01T12:30:00+01:00"],  # pendulum -> datetime, offset kept
        "nested": ["datetime", "2024-03-01T12:30:00+01:00"],
        "gap": ["datetime", 3600.0],  # pendulum Duration -> timedelta
        "is_datetime": True,
    }
    assert run.result("from_upstream") == "2024-05-06T07:08:00+00:00"  # a pendulum value from a plain @task


def test_templates_dict_is_rendered_and_passed(run):
    assert run.result("templated") == {"greeting": "hello ada", "run": run.run_id}


def test_context_values_have_their_real_values(run):
    values = run.result("context_values")
    logical = values["logical_date"]
    assert values == {
        "params": {"who": "ada"}, "run_id": run.run_id, "ds": logical[:10], "logical_date": logical,
        "ts": logical, "try_number": 1, "map_index": -1,
    }


def test_get_current_context_says_what_to_declare_instead(run):
    assert (
        "task 'asks_for_context': the function raised ModuleNotFoundError: No module named 'airflow' "
        "(Airflow is not installed where the function runs, so get_current_context()" in run.output
    )
    assert "declare the context values it needs as parameters instead" in run.output


def test_return_values_are_logged_as_by_task_unless_turned_off(run):
    assert "Done. Returned value was: logged" in run.output
    assert "Done. Returned value not shown" in run.output  # from_upstream: show_return_value_in_logs=False


def test_links_a_target_did_not_record_are_neither_logged_nor_stored(run):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    assert "XCom not found" not in run.output
    with create_session() as session:
        keys = session.scalars(
            select(XComModel.key).where(XComModel.dag_id == "infra_taskflow", XComModel.run_id == run.run_id)
        ).all()
    assert not [k for k in keys if k.startswith("_link_") or k.startswith("airflow_infra_link")]
