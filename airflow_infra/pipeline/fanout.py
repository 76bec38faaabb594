"""Fan-out: one `@infra_task` over a run-time list, as a single Airflow task instance.

`square.partial(k=2).fan_out(x=make_items(), chunk=50, parallelism=8, max_failures=0.01)`
makes one task whose call runs the function once per item of `x`, in chunks (items per
child process, array child or pod). Airflow sees one task instance and one XCom row, past
`max_map_length` and without a grid of 10,000 boxes. In the call's folder:

    chunk-{c}.items.pkl   the chunk's [(index, item), ...]           (this module, before submit)
    chunk-{c}.pkl         its results in the same order, None where an item failed (runtime.run_chunk)
    chunk-{c}.json        per item: ok, error and traceback, wall, cpu, peak memory
    fan_out.json          the manifest: where each index's result is, which failed (this module, at the end)

A later try of the task (a retry, or a clear) runs only the items without a good result:
the manifest points at the earlier try's chunk files for the others. The task's XCom value
is a reference to the manifest, which a downstream `@infra_task` receives as a lazy
sequence (runtime.FanOutResults).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from airflow_infra.errors import InfraSpecError, InfraStoreError, InfraTaskFailed, where
from airflow_infra.runtime import FAN_OUT_KEY, REF_KEY  # light: the decorator imports this module where DAGs are parsed

MANIFEST = "fan_out.json"
# Chunks per worker when no chunk size is given: a slow item holds up a quarter of a
# worker's share, not all of it, and each chunk's fixed cost (a fork, two files) is paid a few times only.
CHUNKS_PER_WORKER = 4
FIRST_ERRORS = 5  # how many failed items' errors the task's failure shows
_TRY_FOLDER = re.compile(r"[1-9][0-9]*(-[1-9][0-9]*)?\Z")


@dataclass(frozen=True)
class FanOut:
    """What `.fan_out(...)` declared, checked where the DAG is parsed."""

    argument: str
    chunk: int | None = None  # items per chunk; None: spread over the workers
    parallelism: int | None = None  # chunks at once; None: the target's
    max_failures: int | float = 0  # failed items tolerated: a count, or a fraction of the items below 1

    def to_json(self) -> dict[str, Any]:
        return {"argument": self.argument, "chunk": self.chunk, "parallelism": self.parallelism, "max_failures": self.max_failures}

    @classmethod
    def from_json(cls, value: Any, dag_id: str | None, task_id: str | None, function: Any = None) -> FanOut:
        """The spec, checked (against `function`'s parameters too, when given)."""
        if not isinstance(value, dict) or set(value) - {"argument", "chunk", "parallelism", "max_failures"}:
            raise InfraSpecError(f"{where(dag_id, task_id)}: fan_out must be {{argument, chunk, parallelism, max_failures}}, got {value!r}")
        spec = cls(**value)
        spec.check(dag_id, task_id, function)
        return spec

    def check(self, dag_id: str | None, task_id: str | None, function: Any = None) -> None:
        at = where(dag_id, task_id)
        if not isinstance(self.argument, str) or not self.argument.isidentifier():
            raise InfraSpecError(f"{at}: fan_out: the argument to fan out over must be a parameter name, got {self.argument!r}")
        for name in ("chunk", "parallelism"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 1 <= value <= 1_000_000):
                raise InfraSpecError(f"{at}: fan_out: {name} must be a whole number from 1 to 1000000, got {value!r}")
        tolerance = self.max_failures
        if type(tolerance) is int:
            if tolerance < 0:
                raise InfraSpecError(f"{at}: fan_out: max_failures must not be negative, got {tolerance}")
        elif type(tolerance) is float:
            if not 0.0 <= tolerance < 1.0 or math.isnan(tolerance):
                raise InfraSpecError(f"{at}: fan_out: max_failures as a fraction must be from 0 to below 1, got {tolerance!r}")
        else:
            raise InfraSpecError(f"{at}: fan_out: max_failures must be a count (int) or a fraction (float), got {tolerance!r}")
        if function is not None:
            import inspect

            parameters = inspect.signature(function).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
            if self.argument not in parameters and not takes_any:
                raise InfraSpecError(f"{at}: fan_out over {self.argument!r}, which is not a parameter of "
                                     f"{getattr(function, '__name__', 'the function')} ({', '.join(parameters) or 'it takes none'})")

    def tolerated(self, items: int) -> int:
        """How many failed items the task survives."""
        if type(self.max_failures) is float:
            return math.floor(self.max_failures * items)
        return int(self.max_failures)


def check_fan_out(value: Any, function: Any, declared: dict[str, Any], cache: Any, on_oom: Any,
                  dag_id: str | None, task_id: str | None) -> dict[str, Any] | None:
    """InfraOperator's fan_out, checked where the DAG is parsed; what the operator keeps."""
    if value is None:
        return None
    spec = FanOut.from_json(value, dag_id, task_id, function)
    at = where(dag_id, task_id)
    automatic = [name for name in ("cpu", "memory") if isinstance(declared.get(name), str) and declared[name].startswith("auto")]
    if automatic:
        raise InfraSpecError(f"{at}: fan_out: {' and '.join(automatic)}='auto' is not supported for a fan-out; declare the size of one item")
    if on_oom is not None:
        raise InfraSpecError(f"{at}: fan_out: on_oom is not supported for a fan-out (a failed item is retried by clearing the task)")
    if cache:
        raise InfraSpecError(f"{at}: fan_out: cache is not supported for a fan-out (a later try reuses each item's result already)")
    return spec.to_json()


def take_argument(function: Any, args: list, kwargs: dict, name: str) -> tuple[Any, list, dict]:
    """The fanned-out argument's value, and the call's other arguments without it (the ones
    after it by keyword: each item goes in by keyword)."""
    import inspect

    bound = inspect.signature(function).bind_partial(*args, **kwargs)
    value = bound.arguments.pop(name, None)
    return value, list(bound.args), dict(bound.kwargs)


def items_of(value: Any, spec: FanOut, dag_id: str, task_id: str) -> list[Any]:
    """The run-time items as a list: a list, tuple, range, or an upstream mapped task's or
    fan-out's results. Anything else (a dict, a string, None) is an error naming the field."""
    if isinstance(value, (str, bytes, dict)) or value is None or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise InfraTaskFailed(
            f"{where(dag_id, task_id)}: fan_out over {spec.argument!r} needs a list of items at run time, got "
            f"{type(value).__name__}"
        )
    return list(value)


def chunking(pending: int, chunk: int | None, parallelism: int, max_chunks: int | None) -> int:
    """Items per chunk: `chunk`, else about CHUNKS_PER_WORKER chunks per worker; never more
    chunks than the target takes at once (an array job's 10,000 children)."""
    size = chunk or max(1, math.ceil(pending / (parallelism * CHUNKS_PER_WORKER)))
    if max_chunks is not None and math.ceil(pending / size) > max_chunks:
        size = math.ceil(pending / max_chunks)
    return size


def fingerprint(items: list[Any], inputs: Any) -> str:
    """Which items and which other inputs: a later try reuses results only for the same."""
    import cloudpickle

    digest = hashlib.sha256()
    digest.update(cloudpickle.dumps(inputs))
    for start in range(0, len(items), 1000):  # a thousand at a time: one pickle call each, never all at once
        digest.update(cloudpickle.dumps(items[start:start + 1000]))
    return digest.hexdigest()


@dataclass
class Done:
    """Items with a good result from an earlier try: where each one's result is."""

    chunks: list[dict[str, Any]] = field(default_factory=list)  # manifest entries: {"results": uri, "segments": [...]}
    indexes: set[int] = field(default_factory=set)


def earlier_results(store: Any, folder: Any, digest: str, log: Any) -> Done:
    """The good results of the latest earlier try (or attempt) of this task instance that
    fanned out over the same items with the same inputs; nothing when there is none."""
    from airflow_infra.artifacts import attempt_order

    here = folder.name
    try:
        earlier = sorted((p for p in folder.parent.iterdir() if _TRY_FOLDER.match(p.name) and p.name != here
                          and attempt_order(p.name) < attempt_order(here)), key=lambda p: attempt_order(p.name), reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        return Done()
    for previous in earlier:
        if not store.exists(previous / MANIFEST):
            continue
        done = Done()
        try:
            manifest = store.read_json(previous / MANIFEST)
            if manifest.get("fingerprint") != digest:
                log.info("try folder %s fanned out over other items or inputs: its results are not reused", previous.name)
                return Done()
            failed = set(manifest["failed"])
            for chunk in manifest["chunks"]:
                store.path(chunk["results"])  # inside the store, or refused
                kept = without(chunk["segments"], failed)
                if kept:
                    done.chunks.append({"results": chunk["results"], "segments": kept})
                    done.indexes.update(i for first, last, _ in kept for i in range(first, last + 1))
        except (KeyError, TypeError, ValueError, InfraStoreError) as exc:
            log.warning("ignoring %s: not a fan-out manifest this task wrote (%s)", previous / MANIFEST, exc)
            return Done()
        return done
    return Done()


def segments(indexes: list[int]) -> list[list[int]]:
    """A chunk's indexes in its results' order as [first, last, position] runs:
    [0, 1, 2, 5, 6] -> [[0, 2, 0], [5, 6, 3]]. Short, however many items."""
    found: list[list[int]] = []
    for position, index in enumerate(indexes):
        if found and found[-1][1] == index - 1:
            found[-1][1] = index
        else:
            found.append([index, index, position])
    return found


def without(runs: list[list[int]], dropped: set[int]) -> list[list[int]]:
    """`runs` less the indexes in `dropped`, each kept index still at its own position."""
    kept: list[list[int]] = []
    for first, last, position in runs:
        for index in range(first, last + 1):
            if index in dropped:
                continue
            at = position + index - first
            if kept and kept[-1][1] == index - 1 and kept[-1][2] + (index - kept[-1][0]) == at:
                kept[-1][1] = index
            else:
                kept.append([index, index, at])
    return kept


def write_chunks(store: Any, folder: Any, items: list[Any], pending: list[int], size: int) -> tuple[list[str], list[int], list[list[int]]]:
    """Each chunk's items into the call's folder; their URIs, sizes and indexes."""
    import pickle

    import cloudpickle

    uris, sizes, members = [], [], []
    for number, start in enumerate(range(0, len(pending), size)):
        indexes = pending[start:start + size]
        path = folder / f"chunk-{number}.items.pkl"
        store.write_bytes(path, cloudpickle.dumps([(i, items[i]) for i in indexes], protocol=pickle.HIGHEST_PROTOCOL), durable=False)
        uris.append(store.uri(path))
        sizes.append(len(indexes))
        members.append(indexes)
    return uris, sizes, members


def conclude(store: Any, folder: Any, spec: FanOut, length: int, chunk_segments: list[list[list[int]]],
             reused: list[dict[str, Any]], reused_items: int, digest: str, dag_id: str, task_id: str, log: Any) -> dict[str, Any]:
    """Read every chunk's report, write the manifest, and fail the task when more items
    failed than it tolerates (after the manifest: a clear then reruns only those). Returns
    the task's XCom value: a reference to the manifest."""
    from airflow_infra.runtime import OUTCOME_FILE

    chunks = list(reused)
    failed: list[int] = []
    errors: dict[int, dict[str, Any]] = {}  # the first few only: a fan-out of 100,000 failures stays small here
    measured = Measured()
    for number, runs in enumerate(chunk_segments):
        try:
            report = store.read_json(folder / f"chunk-{number}.json")
            items, peak = report["items"], report.get("peak_memory_bytes")
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            error = {"type": "NoReport", "message": f"its chunk ({number}) reported nothing"}
            items, peak = [{"index": i, "ok": False, "error": error} for first, last, _ in runs for i in range(first, last + 1)], None
        for entry in items:
            if not entry.get("ok"):
                failed.append(entry["index"])
                if len(errors) < FIRST_ERRORS:
                    errors[entry["index"]] = entry.get("error") or {}
            measured.add(entry)
        if peak:
            measured.peaks.append(float(peak))
        del items  # one chunk's report in memory at a time
        chunks.append({"results": store.uri(folder / f"chunk-{number}.pkl"), "segments": runs})
    failed.sort()
    errors = {i: errors[i] for i in sorted(errors)}
    ran = sum(last - first + 1 for runs in chunk_segments for first, last, _ in runs)
    manifest = {
        "length": length, "fingerprint": digest, "chunks": chunks, "failed": failed, "reused": reused_items, "ran": ran,
        "errors": {str(i): e for i, e in errors.items()},
    }
    store.write_json(folder / MANIFEST, manifest)
    summary = {"items": length, "ran": ran, "reused": reused_items, "failed": len(failed)}
    outcome_path = folder / OUTCOME_FILE
    outcome = store.read_json(outcome_path) if store.exists(outcome_path) else {"ok": True}
    store.write_json(outcome_path, {**outcome, "fan_out": summary, "items_measured": measured.summary()})
    log.info("fan-out over %d items: %d ran in this try, %d had a result from an earlier one, %d failed",
             length, ran, reused_items, len(failed))
    if len(failed) > spec.tolerated(length):
        first = "\n".join(f"  item {i}: {e.get('type', '?')}: {e.get('message', '')}" for i, e in errors.items())
        raise InfraTaskFailed(
            f"{where(dag_id, task_id)}: {len(failed)} of {length} items failed (max_failures={spec.max_failures!r} "
            f"tolerates {spec.tolerated(length)}); the first errors:\n{first}\n"
            "Clearing the task runs only the failed items again."
        )
    return {REF_KEY: store.uri(folder / MANIFEST), FAN_OUT_KEY: True, "type": "airflow_infra.runtime.FanOutResults",
            "bytes": len(json.dumps(manifest)), "sha256": None, "length": length}


class Measured:
    """Items' measurements in brief, for the plugin page: quantiles of wall and CPU time (per
    item) and of peak memory (per chunk: its items share a process), and the slowest items.
    Floats and a short heap, not the reports' entries: 100,000 items cost a few MiB here."""

    QUANTILES = (0, 0.25, 0.5, 0.75, 0.9, 0.99, 1)

    def __init__(self) -> None:
        from array import array

        self.walls, self.cpus, self.peaks = array("d"), array("d"), array("d")
        self._slowest: list[tuple[float, int]] = []

    def add(self, entry: dict[str, Any]) -> None:
        import heapq

        wall = float(entry.get("wall_seconds") or 0)
        self.walls.append(wall)
        self.cpus.append(float(entry.get("cpu_seconds") or 0))
        if len(self._slowest) < 5:
            heapq.heappush(self._slowest, (wall, -entry["index"]))
        else:
            heapq.heappushpop(self._slowest, (wall, -entry["index"]))

    def summary(self) -> dict[str, Any]:
        def quantiles(values: Any) -> list[float]:
            ordered = sorted(values)
            return [ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] for q in self.QUANTILES] if ordered else []

        return {
            "quantiles": list(self.QUANTILES), "wall_seconds": quantiles(self.walls), "cpu_seconds": quantiles(self.cpus),
            "peak_memory_bytes": quantiles(self.peaks),
            "slowest": [{"index": -i, "wall_seconds": w} for w, i in sorted(self._slowest, reverse=True)],
        }


def chunk_refs(store: Any, ref: dict[str, Any]) -> list[str]:
    """The files a fan-out reference stands for (its manifest's chunks): a call that takes
    the results has them staged with it."""
    manifest = store.read_json(store.path(ref[REF_KEY]))
    uris = [chunk["results"] for chunk in manifest["chunks"]]
    for uri in uris:
        store.path(uri)  # inside the store, or refused
    return uris
