"""Automatic requests: `memory="auto"` and `cpu="auto"` sized from the task's own history.

Each successful call of a task with an automatic request leaves one record in the store,
written by the worker from the call's measured use:

    {artifacts}/~autosize/{dag_id}/{task_id}/{finished, ms}-{try}-{map_index}-{run_id}.json

Before a call is planned (so routing sees the result), each automatic field becomes a
number: the `percentile` of what the task's last `runs` runs used (peak memory; average
cores, CPU seconds over wall seconds), times `headroom`, within infra.yaml's
`autosize.<field>` [min, max]. With no record yet: the declared first-run default
("auto:4Gi") or infra.yaml's `default`. A mapped task's indexes pool their records: it
sizes per task, not per index. An out-of-memory kill leaves no record (its peak is only the
limit it hit): `on_oom` escalation covers it within the run, and the escalated try that
succeeds records what it used.

Trust: a record is derived from the outcome the call wrote, so a call can misreport its
own use. That sizes only later calls of its own task, never outside [min, max], the
platform's bounds. A record that is not what this module writes is skipped, with a warning
naming it: sizing is a request, not a result.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_infra.artifacts import AUTOSIZE_DIR, path_component
from airflow_infra.errors import InfraSpecError, where
from airflow_infra.quantities import format_bytes
from airflow_infra.spec import AUTO_FIELDS, QUANTITY_PARSERS, auto_request

if TYPE_CHECKING:
    from airflow_infra.artifacts import ArtifactStore
    from airflow_infra.config import AutosizePolicy

_READ_AT_MOST = 400  # records read per call: the newest ones, enough for `runs` runs of a wide mapped task
_KEEP = 1000  # records kept per task; older ones are removed when history lists them
_RECORD_KEYS = {"run_id", "map_index", "try_number", "peak_memory_bytes", "cores", "wall_seconds", "requested", "finished_at"}


def automatic(declared: dict[str, Any]) -> dict[str, str | None]:
    """The declaration's automatic fields and their declared first-run defaults."""
    found = {}
    for name in AUTO_FIELDS:
        is_auto, default = auto_request(name, declared.get(name))
        if is_auto:
            found[name] = default
    return found


@dataclass(frozen=True)
class Sized:
    """One automatic field's value for this call, and where it came from."""

    field: str
    value: float  # bytes (memory) or cores (cpu)
    source: str  # "history" or "default"
    detail: str  # for the task log
    runs: tuple[str, ...] = ()
    calls: int = 0
    used: float | None = None  # the percentile of use it was derived from
    bound: str | None = None  # "min" / "max" (infra.yaml) or "shm" (the declared shm) when a bound decided it

    def shown(self) -> str:
        return _show(self.field, self.value)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.shown(), "source": self.source, "runs": list(self.runs), "calls": self.calls,
                "used": None if self.used is None else (format_bytes(int(self.used)) if self.field == "memory" else round(self.used, 3)),
                "bound": self.bound}


def _show(name: str, value: float) -> str:
    return format_bytes(int(value)) if name == "memory" else f"{value:g}"


def resolve(
    declared: dict[str, Any], policy: AutosizePolicy, store: ArtifactStore, dag_id: str, task_id: str, run_id: str, log: Any
) -> tuple[dict[str, Any], dict[str, Sized]]:
    """The declaration with each automatic field replaced by its size for this call, and the
    sizes. Only earlier runs count: every index of a mapped task in one run gets one size,
    whatever order they run in."""
    wanted = automatic(declared)
    if not wanted:
        return declared, {}
    records = history(store, dag_id, task_id, policy.runs, log, before=run_id)
    shm = _declared_shm(declared)
    sized = {name: _size(name, default, records, policy, where(dag_id, task_id), shm if name == "memory" else None)
             for name, default in wanted.items()}
    for item in sized.values():
        log.info("%s='auto': %s %s", item.field, item.shown(), item.detail)
    out = dict(declared)
    for name, item in sized.items():
        out[name] = int(item.value) if name == "memory" else item.value
    return out, sized


def _declared_shm(declared: dict[str, Any]) -> int | None:
    """Shared memory counts against the memory limit: a size never goes below a declared shm.
    None also for a (rendered) shm that is no size: planning reports it, naming the field."""
    try:
        return QUANTITY_PARSERS["shm"](declared["shm"]) if declared.get("shm") is not None else None
    except ValueError:
        return None


def _size(name: str, default: str | None, records: list[dict[str, Any]], policy: AutosizePolicy, task: str, floor: float | None) -> Sized:
    bounds = getattr(policy, name)
    used = [r["peak_memory_bytes"] if name == "memory" else r["cores"] for r in records]
    used = [u for u in used if u is not None]
    runs: tuple[str, ...] = ()
    level, bound = None, None
    if not used:
        source = "default"
        if default is None:
            value, detail = bounds.default, "(infra.yaml's autosize default: no successful run recorded yet)"
        else:
            try:
                value = QUANTITY_PARSERS[name](default)
            except ValueError as exc:  # checked at parse time; a rendered template gets here
                raise InfraSpecError(f"{task}: {name}='auto:{default}': {exc}") from None
            detail = "(the declared first-run default: no successful run recorded yet)"
    else:
        source = "history"
        runs = tuple(dict.fromkeys(r["run_id"] for r in records))
        level = percentile(used, policy.percentile)
        value = level * policy.headroom
        if value < bounds.min:
            value, bound = bounds.min, "min"
        elif value > bounds.max:
            value, bound = bounds.max, "max"
        value = _round_up(name, value)
        shown_level = format_bytes(int(level)) if name == "memory" else f"{level:.2f} cores"
        detail = (f"from the p{policy.percentile:g} {'peak' if name == 'memory' else 'use'} {shown_level} of {len(used)} "
                  f"call(s) in the last {len(runs)} run(s) ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}) "
                  f"x{policy.headroom:g} headroom")
        if bound is not None:
            detail += f", {'raised to the minimum' if bound == 'min' else 'capped at the maximum'} {_show(name, value)} (infra.yaml autosize.{name}.{bound})"
    if floor is not None and floor > value:  # shared memory counts against the limit
        value, bound = (floor if source == "default" else _round_up(name, floor)), "shm"
        detail += f", raised to shm={_show(name, value)}"
    return Sized(name, value, source, detail, runs, len(used), level, bound)


def _round_up(name: str, value: float) -> float:
    """Memory up to a whole MiB, cores up to a twentieth: requests read as people write them."""
    if name == "memory":
        return float(math.ceil(value / 2**20) * 2**20)
    return math.ceil(round(value * 20, 6)) / 20


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile: a value that was measured, never an interpolation below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _folder(store: ArtifactStore, dag_id: str, task_id: str) -> Any:
    return store.root / AUTOSIZE_DIR / path_component(dag_id) / path_component(task_id)


def history(store: ArtifactStore, dag_id: str, task_id: str, runs: int, log: Any, before: str | None = None) -> list[dict[str, Any]]:
    """The records of the task's last `runs` runs that have any, newest first (without run `before`'s)."""
    folder = _folder(store, dag_id, task_id)
    names = _listing(store, folder)
    for name in names[_KEEP:]:  # the oldest, beyond what any window reads: pruned here, where they are listed anyway
        (folder / name).unlink(missing_ok=True)
    picked: list[dict[str, Any]] = []
    seen_runs: list[str] = []
    for name in names[:_READ_AT_MOST]:
        record = _read(store, folder / name, log)
        if record is None or record["run_id"] == before:
            continue
        if record["run_id"] not in seen_runs:
            if len(seen_runs) == runs:
                break
            seen_runs.append(record["run_id"])
        picked.append(record)
    return picked


def _listing(store: ArtifactStore, folder: Any) -> list[str]:
    """The record files' names, newest first (their names start with the time they were written)."""
    try:
        if not store.exists(folder):
            return []
        return sorted((p.name for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith(".")), reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read(store: ArtifactStore, path: Any, log: Any) -> dict[str, Any] | None:
    try:
        record = store.read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("autosize: skipping %s: cannot be read (%s)", store.uri(path), type(exc).__name__)
        return None
    if not _valid(record):
        log.warning("autosize: skipping %s: it is not a record this provider writes", store.uri(path))
        return None
    return record


def _number(value: Any, high: float) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value <= high


def _valid(record: Any) -> bool:
    return (
        isinstance(record, dict) and set(record) == _RECORD_KEYS
        and isinstance(record["run_id"], str) and len(record["run_id"]) <= 250
        and (record["peak_memory_bytes"] is None or _number(record["peak_memory_bytes"], 2**50))
        and (record["cores"] is None or _number(record["cores"], 1024))
    )


def record(store: ArtifactStore, meta: dict[str, Any], outcome: dict[str, Any], log: Any) -> None:
    """After a successful call of a task with an automatic request: what it used, for the
    next calls' sizes. A failure to write it is said, not raised: the result is safe."""
    if not meta.get("autosized") or not outcome.get("ok") or outcome.get("cache_hit"):
        return
    metrics = outcome.get("metrics") or {}
    peak, cpu, wall = metrics.get("peak_memory_bytes"), metrics.get("cpu_seconds"), metrics.get("wall_seconds")
    cores = round(cpu / wall, 4) if _number(cpu, 1e9) and _number(wall, 1e9) and wall > 0 else None
    entry = {
        "run_id": meta["run_id"], "map_index": meta["map_index"], "try_number": meta["try_number"],
        "peak_memory_bytes": peak if _number(peak, 2**50) else None, "cores": cores if cores is None or cores <= 1024 else None,
        "wall_seconds": wall if _number(wall, 1e9) else None,
        "requested": {"memory": meta["resources"].get("memory"), "cpu": meta["resources"].get("cpu")},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    folder = _folder(store, meta["dag_id"], meta["task_id"])
    name = f"{int(time.time() * 1000):013d}-{meta['try_number']}-{meta['map_index']}-{path_component(meta['run_id'])}.json"
    try:
        store.write_json(folder / name, entry)
    except OSError as exc:
        log.warning("autosize: could not record this call's use in %s: %s", store.uri(folder), exc)
