"""`@task.infra` as a drop-in for `@task`, checked on Airflow's own example DAGs.

The example DAGs shipped with the installed Airflow (`airflow/example_dags/`) and with its
standard provider (`airflow/providers/standard/example_dags/`) are rewritten on the syntax
tree (tests/compat/rewrite.py): their plain `@task` / `@task(...)` become `@task.infra` /
`@task.infra(...)` (`@setup` / `@teardown` on a bare function get `@task.infra` under them),
and every DAG id gets the suffix `_infra`. `@task.virtualenv`, `@task.external_python`,
`@task.bash`, `@task.branch`, `@task.short_circuit`, `@task.sensor` and the other
attribute forms stay: each is its own operator with its own semantics (a branch decision, a
poke, a shell command, an interpreter of its own), not a plain Python task.

Both versions go into the session's dags folder (`$AIRFLOW_HOME/dags/compat/{orig,infra}/`,
with the examples' `sql/` folders next to them, the template searchpath), only for the test
that runs them; each is run with the real `airflow dags test` (tests/dagrun.py), and what the
runs left behind is compared:

- the DagRun's final state;
- per (task_id, map_index), from Airflow's DB (TaskInstance): the final state and try number;
- every XCom (XComModel: return values and multiple_outputs keys; not the extra-link XComs
  an infra task adds): equal values of the same type. An infra task's plain result is in
  XCom as the value itself; a non-plain or large one is a reference
  `{"__infra_artifact__": uri, ...}`, which is loaded through `airflow_infra.client.Client`
  from that call's stored outputs and compared as the value it stands for (a reference is not
  a difference by itself: it is how the provider documents moving such values). A branch
  task's `skipmixin_key` lists the tasks it followed in set order, so it is compared as a set;
- what the functions print or log: most example tasks return None and only say what they
  computed in the task log, so a case names a few "witness" strings per task (the rendered
  .sql file, a total, a greeting) that must be in that task's part of the `airflow dags test`
  output in both versions (substrings: the infra version logs in its own format, e.g. with
  the logger's name in front).

Values that depend on the run (run_id, dates) are in none of the compared XComs or
witnesses. Everything is asserted as full equality, with no xfail: a failing case is a gap
between `@task` and `@task.infra`, or a documented limit below that changed.

Documented limits (README, "Declaring a task": the function runs where Airflow is not
installed, and only plain context values travel), each asserted precisely (the task fails, on
the expected try, with the message; its downstream tasks end as listed; everything else in
the DAG is compared as above):

- a function that names a live Airflow object as a parameter — `ti` (RuntimeTaskInstance),
  `task` (the operator), `task_state_store` (AIP-103 accessor), likewise `dag_run` — cannot
  get it: "the function asks for context 'ti' (...), which cannot travel to where it runs";
- a function that calls `get_current_context()` (Airflow's, not importable where it runs)
  fails saying so: "Airflow is not installed where the function runs, so
  get_current_context() ... declare the context values it needs as parameters instead".

Not covered, because no installed example uses them on a plain `@task`: `.expand_kwargs`,
pools, `execution_timeout`, `@task.short_circuit` next to plain tasks (the short-circuit
example has no plain task). tests/test_decorator.py covers those on purpose-made DAGs.

The run: `.venv/bin/python -m pytest tests/test_task_compat.py -q -p no:cacheprovider`
(about 6 minutes: two `airflow dags test` of ~10 s each per case).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compat.compare import differences, record
from tests.compat.rewrite import to_infra

pytestmark = pytest.mark.integration

SUFFIX = "_infra"
PACKAGES = {"core": "airflow.example_dags", "standard": "airflow.providers.standard.example_dags"}
LIMIT_MESSAGE = ("the function asks for context", "cannot travel to where it runs")
# A function that calls get_current_context(): the failure says why and what to declare instead.
GET_CURRENT_CONTEXT = ("Airflow is not installed where the function runs", "get_current_context()")


@dataclass(frozen=True)
class Limit:
    """A task that must fail in the infra version, on a message that says why."""

    keys: tuple[str, ...] = ()  # the message names one of these context keys (the first the function asks for)
    tries: int = 1  # the try it ends on: retries apply to this failure as to any other
    says: tuple[str, ...] = LIMIT_MESSAGE  # every fragment is in the task's output
    why: str = ""


@dataclass(frozen=True)
class Case:
    dag_id: str
    package: str  # key of PACKAGES
    file: str  # the example's file name without .py
    covers: str
    conf: dict | None = None
    limits: Mapping[str, Limit] = field(default_factory=dict)
    consequences: Mapping[str, str] = field(default_factory=dict)  # task_id -> state, downstream of a limit
    says: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # task_id -> output witnesses

    @property
    def expected(self) -> dict[str, str]:
        return {**{task: "failed" for task in self.limits}, **self.consequences}

    def __str__(self) -> str:
        return self.dag_id


TI = "ti: the live RuntimeTaskInstance (xcom_push/xcom_pull, try_number, map_index)"
TASK = "task: the live operator object (task.params, render_template)"

CASES = [
    Case("example_dynamic_task_mapping", "core", "example_dynamic_task_mapping",
         "mapping over a literal list; a reduce task gets the lazy sequence of mapped results",
         says={"sum_it": ("Total was 9",)}),
    Case("example_task_mapping_second_order", "core", "example_dynamic_task_mapping",
         "mapping over an upstream task's list, then over a mapped task's results"),
    Case("example_task_group_mapping", "core", "example_dynamic_task_mapping",
         "a mapped @task_group: two chained infra tasks per map index"),
    Case("example_setup_teardown_taskflow", "core", "example_setup_teardown_taskflow",
         "as_teardown(setups=...), @setup/@teardown functions, teardown as context manager, "
         "inner setup/teardown in a task group, a setup's result passed to work and teardown",
         says={"my_first_task": ("Hello 1",), "outer_teardown": ("Tearing down cluster: some cluster id",),
               "section_1.inner_work": ("doing some work with cluster_id='some_cluster_id'",),
               "section_1.inner_teardown": ("tearing down cluster_id='some_cluster_id'",)}),
    Case("tutorial_taskflow_api", "core", "tutorial_taskflow_api",
         "multiple_outputs=True, an XComArg indexed by key, a float result",
         says={"load": ("Total order value is: 1236.70",)}),
    Case("example_params_trigger_ui", "core", "example_params_trigger_ui",
         "params through **kwargs, @task.branch (kept) in front of mapped infra tasks, "
         "task_display_name, trigger_rule=ALL_DONE reducer of three mapped tasks",
         says={"print_greetings": ("Hello Linda!", "Sehr geehrter Herr/Frau Martha.", "Bonjour Thomas!")}),
    Case("example_params_ui_tutorial", "core", "example_params_ui_tutorial",
         "a rich params dict (Param types, nested objects, dates as strings) through **kwargs",
         conf={"required_field": "a value of 10+ chars"},
         says={"show_params": ('"required_field": "a value of 10+ chars"', '"hidden_secret_field": "constant value"')}),
    Case("example_python_decorator", "standard", "example_python_decorator",
         "context through ds=None and **kwargs, templates_dict + templates_exts (a rendered .sql file) read "
         "through **kwargs and logged with `logging`, .override(task_id=...), async def tasks; "
         "@task.virtualenv and @task.external_python kept",
         says={"log_sql_query": ("Python task decorator query: /*", "CREATE TABLE Orders (")}),
    Case("example_failed_dag", "core", "example_failed_dag",
         "the user's exception fails the task (and the run) in both",
         says={"fail_task": ("This is a test exception for stacktrace rendering",)}),
    Case("example_xcom_args", "core", "example_xcomargs",
         "an XComArg passed straight in; ts=None from the context; a module-level `logging` logger",
         says={"print_value": ("The knights of Ni say: Bring me a shrubbery!",)}),
    # -- documented limits -------------------------------------------------------------------
    Case("example_xcom", "core", "example_xcom",
         "limit: ti; a plain return value next to them; BashOperators push/pull XComs",
         limits={"push": Limit(("ti",), why=TI), "pull_value_from_bash_push": Limit(("ti",), why=TI)},
         consequences={"puller": "upstream_failed"}),
    Case("example_passing_params_via_test_command", "core", "example_passing_params_via_test_command",
         "limit: task; params passed as the task's own keyword; an environment variable",
         limits={"run_this": Limit(("task",), why=TASK)},
         consequences={"also_run_this": "upstream_failed"}),
    Case("example_task_state_store", "core", "example_task_state_store",
         "limit: task_state_store / ti, with retries=2 and a 5 s retry_delay honoured (3 tries)",
         limits={"run_job": Limit(("task_state_store", "ti"), tries=3,
                                  why="task_state_store: a live accessor of the AIP-103 task state store; " + TI)}),
    Case("tutorial_taskflow_templates", "core", "tutorial_taskflow_templates",
         "limit: get_current_context() inside the function; templates_exts and .override(params=...) on the task",
         limits={"template_test": Limit(says=GET_CURRENT_CONTEXT, why=(
             "get_current_context() is Airflow's, and Airflow is not installed where the function runs; what it "
             "reads, context['task'].render_template, is a live operator that could not travel anyway"))}),
]

# Example files with plain @task that are not run, and why. A new example in a newer Airflow
# fails test_every_example_is_classified until it is added to CASES or here.
SKIPPED = {
    ("core", "example_asset_alias"): "asset producers/consumers: consumers are asset-scheduled, the alias "
    "tasks use outlet_events/inlet_events (live accessors, the same limit as ti); asset events are not compared",
    ("core", "example_asset_decorator"): "@asset functions are DAGs of their own, named after the asset "
    "(cannot be renamed); the consumer waits on the asset",
    ("core", "example_asset_partition"): "partitioned asset scheduling; tasks wait on asset partitions and call "
    "get_current_context()",
    ("core", "example_asset_state_store"): "asset_state_store (a live accessor, the same limit as ti); the "
    "consumer is asset-scheduled",
    ("core", "example_asset_with_watchers"): "AssetWatcher with a FileDeleteTrigger: waits in the triggerer",
    ("core", "example_dag_decorator"): "fetches the machine's IP over HTTP (httpx): an external service",
    ("core", "example_display_name"): "one no-op task after an EmptyOperator; task_display_name is covered by "
    "example_params_trigger_ui",
    ("core", "example_inlet_event_extra"): "reads inlet_events of an asset (live accessor) that needs earlier "
    "asset events",
    ("core", "example_kubernetes_executor"): "executor_config for the KubernetesExecutor (pods, volumes)",
    ("core", "example_local_kubernetes_executor"): "executor_config / queue for the LocalKubernetesExecutor",
    ("core", "example_outlet_event_extra"): "asset events with extras through outlet_events (live accessor) "
    "and a generator yielding Metadata; asset events are not compared",
    ("core", "example_retry_policy"): "calls https://api.example.com (an external service); 5 retries with a "
    "1-minute delay",
    ("core", "example_simplest_dag"): "one no-op task; nothing another case does not cover",
    ("core", "example_task_group_decorator"): "runtime (17 tasks, ~25 s a run): module-level tasks in task groups "
    "are covered by example_setup_teardown_taskflow (task group), example_task_group_mapping and example_xcom "
    "(module-level tasks)",
    ("core", "example_task_state_store_async"): "the limit of example_task_state_store (task_state_store, ti) "
    "again, as async def; its retries would cost another ~25 s",
    ("core", "example_task_state_store_mapped"): "results are random row counts and timestamps (the two runs "
    "differ by design), and the same task_state_store/ti limit as example_task_state_store",
    ("core", "example_trigger_target_dag"): "run_this asks for dag_run (a live DagRun: the limit already "
    "asserted for ti and task) to read a conf only TriggerDagRunOperator passes; ~25 s for no new behaviour",
    ("core", "tutorial_objectstorage"): "downloads air quality data over HTTP and writes to object storage "
    "(an aws connection)",
    ("core", "tutorial_taskflow_api_virtualenv"): "its plain tasks are tutorial_taskflow_api's transform/load "
    "verbatim; its @task.virtualenv builds a venv from PyPI (dill, funcsigs) each run",
    ("standard", "example_branch_operator_decorator"): "branches on random.choice: the two runs take different "
    "branches by design; its virtualenv branch downloads numpy~=1.26 from PyPI",
    ("standard", "example_measurement_correction_decorator"): "runtime: a linear chain of int/float results, "
    "as tutorial_taskflow_api's",
    ("standard", "example_hitl_operator"): "human-in-the-loop operators wait for a person's answer",
    ("standard", "example_sensor_decorator"): "the only plain task is a no-op after a reschedule-mode sensor; "
    "~20 s a run for nothing another case does not cover",
}
# DAGs in a file that CASES uses, not run themselves.
SKIPPED_DAGS = {
    "example_xcom_args_with_operators": "the same print_value task as example_xcom_args, between two "
    "BashOperators; ~25 s for no new behaviour",
}


def _folder(package: str) -> Path:
    spec = importlib.util.find_spec(PACKAGES[package])
    assert spec is not None and spec.submodule_search_locations, PACKAGES[package]
    return Path(next(iter(spec.submodule_search_locations)))


def _env(dags) -> dict[str, str]:
    """Bytecode for the `airflow dags test` processes, cached in the session's throwaway home.

    This machine's environment sets PYTHONDONTWRITEBYTECODE, so each process would compile
    Airflow from source again (~3.5 s of a ~13 s run); the cache changes nothing else."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(dags.home / "pycache")}


def _relative(kind: str, case: Case) -> str:
    return f"compat/{kind}/{case.package}/{case.file}.py"


def _write(root: Path, case: Case) -> None:
    """Both versions of the case's example file under root/{orig,infra}/<package>/, with the
    folders of template files (sql/...) that sit next to it (the template searchpath)."""
    folder = _folder(case.package)
    source = (folder / f"{case.file}.py").read_text()
    rewritten = to_infra(source, SUFFIX, filename=f"{case.file}.py")
    assert rewritten.tasks, f"{case.file}: no plain @task to rewrite"
    for kind, text in (("orig", source), ("infra", rewritten.source)):
        target = root / kind / case.package
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{case.file}.py").write_text(text)
        for sub in folder.iterdir():
            if sub.is_dir() and any(p.is_file() and p.suffix not in (".py", ".pyc") for p in sub.rglob("*")):
                shutil.copytree(sub, target / sub.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.py", "*.pyc", "__pycache__"))


@pytest.fixture
def compat_dags(dags, request):
    """The case's two files in the session's dags folder, for this test only: every
    `airflow dags test` parses the whole folder, so it holds just the pair being compared.

    The infra copy keeps the file name (in a folder of its own), so an id computed from
    `Path(__file__).stem` becomes the original id + the suffix like every other."""
    root = dags.home / "dags" / "compat"
    _write(root, request.node.callspec.params["case"])
    yield root
    if not os.environ.get("AIRFLOW_INFRA_KEEP_TEST_HOME"):
        shutil.rmtree(root, ignore_errors=True)


def _limit_problems(case: Case, infra) -> list[str]:
    """Each limited task failed on the documented message (naming its context key), on the expected try."""
    problems = []
    for task_id, limit in case.limits.items():
        keys = [key for key in infra.tasks if key[0] == task_id]
        if not keys:
            problems.append(f"{task_id}: no task instance (expected to fail on a limit)")
        for key in keys:
            state, tries = infra.tasks[key]
            text = infra.text(key)
            named = not limit.keys or any(f"{LIMIT_MESSAGE[0]} {k!r}" in text for k in limit.keys)
            if state != "failed" or not named or not all(s in text for s in limit.says) or tries != limit.tries:
                wanted = list(limit.says) + ([f"naming one of {list(limit.keys)}"] if limit.keys else [])
                problems.append(
                    f"{task_id}: a limit ({limit.why}): expected to fail on try {limit.tries} saying {wanted}; "
                    f"got {state} on try {tries}: " + ("; ".join(infra.errors(key)) or "(no error line)")
                )
    return problems


def _output_problems(case: Case, orig, infra) -> list[str]:
    """Each witness shows in the task's output in both versions."""
    problems = []
    for task_id, witnesses in case.says.items():
        for witness in witnesses:
            assert witness in orig.task_text(task_id), f"witness {witness!r} not in the original {task_id}'s output"
            if witness not in infra.task_text(task_id):
                problems.append(f"{task_id}: output lacks {witness!r}")
    return problems


@pytest.fixture(scope="session")
def originals_db(dags) -> str:
    """A copy of the session's migrated Airflow database for the original examples: each
    case's two `airflow dags test` runs go at once (one per core), and two processes writing
    one SQLite file would wait on each other's locks.

    Copied through SQLite's backup API, never as a file: Airflow keeps its database in WAL
    mode, and a plain open()/close() of it in this process drops the POSIX locks this
    process's own pooled connection holds on it; the next `airflow dags test` to exit then
    takes itself for the last user and deletes the WAL under that connection, which from
    then on reads no new rows (every case after the first saw its task instances as
    missing) or corrupts the file ("database disk image is malformed")."""
    copy = dags.home / "airflow-originals.db"
    source = sqlite3.connect(f"file:{dags.home / 'airflow.db'}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return f"sqlite:///{copy}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_infra_version_matches_task_version(dags, compat_dags, originals_db, case: Case):
    with ThreadPoolExecutor(2) as pool:
        orig_run = pool.submit(
            dags.test, case.dag_id, conf=case.conf, env={**_env(dags), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": originals_db}
        )
        infra_run = pool.submit(dags.test, case.dag_id + SUFFIX, conf=case.conf, env=_env(dags))
    orig = record(orig_run.result(), _relative("orig", case), db_url=originals_db)
    assert orig.run.run_id, f"the original {case.dag_id} did not run: {orig.import_error}\n{orig.run.output[-3000:]}"
    assert orig.tasks, f"the original {case.dag_id} has no task instances"
    infra = record(infra_run.result(), _relative("infra", case))

    references: list[str] = []
    diffs = differences(
        orig, infra, case.expected, expected_run_state="failed" if case.limits else None, references=references
    )
    if infra.run.run_id is not None:
        diffs += _limit_problems(case, infra) + _output_problems(case, orig, infra)
    assert not diffs, (
        f"{case.dag_id}{SUFFIX} differs from {case.dag_id} ({case.covers}):\n  " + "\n  ".join(diffs)
        + (f"\n  (compared through references: {references})" if references else "")
    )


def test_every_example_is_classified():
    """Each installed example with a plain @task is run (CASES) or skipped with a reason (SKIPPED);
    the rewrite of each parses, changes at least one task and renames every DAG."""
    run = {(case.package, case.file) for case in CASES}
    assert not run & SKIPPED.keys()
    unclassified, broken = [], []
    for package in PACKAGES:
        for path in sorted(_folder(package).glob("*.py")):
            try:
                rewritten = to_infra(path.read_text(), SUFFIX, filename=str(path))
            except (SyntaxError, ValueError) as exc:
                broken.append(f"{path.name}: {exc}")
                continue
            if rewritten.tasks and (package, path.stem) not in run | SKIPPED.keys():
                unclassified.append(f"{package}/{path.name}")
            if rewritten.tasks and not rewritten.dags:
                broken.append(f"{path.name}: no DAG id renamed")
            if (package, path.stem) in run:  # every literal DAG id of a file that is run is a case or skipped
                cases = {case.dag_id for case in CASES}
                unclassified += [f"{path.name}: DAG {i}" for i in rewritten.dag_ids if i not in cases | SKIPPED_DAGS.keys()]
    assert not broken, broken
    assert not unclassified, f"examples with plain @task: add each to CASES or SKIPPED(_DAGS): {unclassified}"
    for package, file in run:
        assert (_folder(package) / f"{file}.py").exists(), f"{package}/{file}.py is gone from the installed Airflow"
