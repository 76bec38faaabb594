"""What a DAG run left in Airflow's database, and where an original and an infra run differ.

Read in the test's own process, from the session's SQLite DB (the same home `airflow dags
test` ran in): per (task_id, map_index) the final state and try number (TaskInstance), and
every XCom except extra links (XComModel, deserialized as Airflow itself would).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.dagrun import DagRun

# XComs that only say where an infra task ran (extra links), not what it computed.
LINK_KEY_PREFIXES = ("_link_", "airflow_infra_")
# A branch operator's XCom lists the task ids it followed in set order, which varies
# between processes (string hashing): compared as a set.
SKIPMIXIN_KEY = "skipmixin_key"

_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_FINISHED = re.compile(r"DagRun Finished: .*?state=(\w+)")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Failed|Failure)\b(?::.*)?$")

Key = tuple[str, int]


@dataclass
class RunRecord:
    """One finished `airflow dags test`: task states, XComs and each task's part of the output."""

    run: DagRun
    state: str | None = None  # the DagRun's final state
    tasks: dict[Key, tuple[str | None, int]] = field(default_factory=dict)  # (state, try_number)
    xcoms: dict[tuple[str, int, str], Any] = field(default_factory=dict)
    sections: dict[Key, list[str]] = field(default_factory=dict)  # output lines, every try
    import_error: str | None = None

    def errors(self, key: Key, limit: int = 3) -> list[str]:
        """The distinct exception lines (`SomeError: message`) in a task's output, the last `limit` of them."""
        found: list[str] = []
        for line in self.sections.get(key, []):
            line = line.strip()
            if _EXCEPTION.match(line) and line not in found:
                found.append(line)
        return found[-limit:]

    def text(self, key: Key) -> str:
        return "\n".join(self.sections.get(key, []))

    def task_text(self, task_id: str) -> str:
        """The output of every map index and try of a task."""
        return "\n".join(line for key, lines in self.sections.items() if key[0] == task_id for line in lines)


def _sections(output: str) -> dict[Key, list[str]]:
    """Split `dags test` output by task: each task's lines follow its `[DAG TEST] starting` line."""
    sections: dict[Key, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        match = _STARTING.search(line)
        if match:
            current = sections.setdefault((match.group(1), int(match.group(2))), [])
        if current is not None:
            current.append(line)
    return sections


@contextmanager
def _session(db_url: str | None) -> Iterator[Any]:
    """A session on the session's Airflow database, or on `db_url` (the copy the original
    examples run against, beside their infra versions)."""
    if db_url is None:
        from airflow.utils.session import create_session

        with create_session() as session:
            yield session
        return
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def _import_error(dag_file_suffix: str, output: str, db_url: str | None = None) -> str | None:
    from airflow.models.errors import ParseImportError
    from sqlalchemy import select

    with _session(db_url) as session:
        for row in session.scalars(select(ParseImportError)).all():
            if (row.filename or "").endswith(dag_file_suffix):
                lines = [line.strip() for line in (row.stacktrace or "").splitlines() if line.strip()]
                # The exception's own line and what follows it (a message may span lines).
                starts = [i for i, line in enumerate(lines) if _EXCEPTION.match(line)]
                return " | ".join(lines[starts[-1] if starts else -1 :][:4]) or "(an import error without a trace)"
    lines = [line for line in output.splitlines() if "could not be found" in line or "Failed to import" in line]
    return lines[-1].strip() if lines else None


def record(run: DagRun, dag_file_suffix: str, db_url: str | None = None) -> RunRecord:
    """Read back a finished run (from `db_url` when it ran against another database); a run
    that never started gets the DAG file's import error."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    out = RunRecord(run, sections=_sections(run.output))
    finished = _FINISHED.findall(run.output)
    out.state = finished[-1] if finished else None
    if run.run_id is None:
        out.import_error = _import_error(dag_file_suffix, run.output, db_url)
        return out
    with _session(db_url) as session:
        for ti in session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
        ).all():
            out.tasks[(ti.task_id, ti.map_index)] = (getattr(ti.state, "value", ti.state), ti.try_number)
        for row in session.scalars(
            select(XComModel).where(XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id)
        ).all():
            if not row.key.startswith(LINK_KEY_PREFIXES):
                out.xcoms[(row.task_id, row.map_index, row.key)] = XComModel.deserialize_value(row)
    return out


def resolve(value: Any, run: DagRun, task_id: str, map_index: int, key: str) -> tuple[Any, bool]:
    """An infra task's XCom as the value it stands for: a reference (a non-plain or large
    result left in the artifact store) is loaded through the Client, from the same call's
    stored outputs. Returns (value, whether it was a reference)."""
    from airflow_infra.artifacts import REF_KEY
    from airflow_infra.client import Client

    if not (isinstance(value, dict) and REF_KEY in value):
        return value, False
    call = Client(f"file://{run.artifacts}").run(run.dag_id, run.run_id or "")[task_id][map_index]
    return call.outputs[key], True


def _normalize(name: str, value: Any) -> Any:
    if name == SKIPMIXIN_KEY and isinstance(value, dict) and isinstance(value.get("followed"), list):
        return {**value, "followed": sorted(value["followed"])}
    return value


def _fmt(key: Key) -> str:
    return f"{key[0]}[{key[1]}]" if key[1] >= 0 else key[0]


def _short(value: Any, width: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def differences(
    orig: RunRecord,
    infra: RunRecord,
    expected: dict[str, str] | None = None,
    expected_run_state: str | None = None,
    references: list[str] | None = None,
) -> list[str]:
    """Every way the infra run differs from the original: the run's state, each task's final
    state and try number, each XCom value. `expected` maps task ids to the state the infra
    run must have instead (documented limits and their consequences); those tasks' try numbers
    and XComs are not compared. `references` collects the XComs that were references."""
    expected = expected or {}
    if infra.run.run_id is None:
        return [f"the DAG did not run: {infra.import_error or infra.run.output[-2000:]}"]
    diffs: list[str] = []
    want_run = expected_run_state or orig.state
    if want_run != infra.state:
        diffs.append(f"DagRun state: {orig.state} -> {infra.state}" + (f", expected {want_run}" if want_run != orig.state else ""))
    for key in sorted(orig.tasks.keys() | infra.tasks.keys()):
        (o_state, o_try), (i_state, i_try) = orig.tasks.get(key, (None, 0)), infra.tasks.get(key, (None, 0))
        want = expected.get(key[0], o_state)
        if want != i_state or (key[0] not in expected and o_try != i_try):
            why = "; ".join(infra.errors(key)) if i_state in ("failed", "up_for_retry") else ""
            diffs.append(
                f"{_fmt(key)}: state {o_state} (try {o_try}) -> {i_state} (try {i_try})"
                + (f", expected {want}" if want != o_state else "")
                + (f": {why}" if why else "")
            )
    for key in sorted(orig.xcoms.keys() | infra.xcoms.keys()):
        task_id, map_index, name = key
        if task_id in expected:
            continue
        missing = object()
        o_value, i_value = orig.xcoms.get(key, missing), infra.xcoms.get(key, missing)
        if i_value is not missing:
            i_value, was_ref = resolve(i_value, infra.run, task_id, map_index, name)
            if was_ref and references is not None:
                references.append(f"{_fmt((task_id, map_index))}:{name}")
        if o_value is not missing and i_value is not missing:
            o_value, i_value = _normalize(name, o_value), _normalize(name, i_value)
        if o_value is missing or i_value is missing or o_value != i_value or type(o_value) is not type(i_value):
            show = lambda v: "(none)" if v is missing else f"{_short(v)} ({type(v).__name__})"  # noqa: E731
            diffs.append(f"{_fmt((task_id, map_index))} XCom {name!r}: {show(o_value)} -> {show(i_value)}")
    return diffs
