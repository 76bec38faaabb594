"""Read past runs from the artifact store, without the Airflow database.

    from airflow_infra.client import Client

    client = Client()                          # the store infra.yaml names (or Client("s3://..."))
    run = client.latest_run("recsys_seed")     # or client.runs("recsys_seed")[i], client.run(dag, run_id)
    run["ensemble"].result                     # the task's return value (latest try)
    run["count_words"][2].result               # map index 2 of a mapped task
    run["fit_a"].metrics, run["fit_a"].environment, run["fit_a"].target

Results are unpickled in the calling process, so it needs the packages the values are
made of (a pandas DataFrame needs pandas).

Any task can write the store, and a worker can die mid-write: a folder that is not what
this provider writes (a stray file, an empty or half-made folder, a call.json that is not
one) is skipped where runs and tasks are listed and named in `Run.problems`; reading such a
call raises InfraStoreError saying what is wrong. One broken folder never hides the others.
"""

from __future__ import annotations

import pickle
import re
from functools import cached_property
from typing import Any

from airflow_infra.artifacts import (
    STORE_DIRS,
    CALL_META_FILE,
    OUTCOME_FILE,
    ArtifactStore,
    attempt_order,
    path_component,
)
from airflow_infra.errors import InfraStoreError

# What every call.json holds (pipeline.package.package_call writes it).
_META_KEYS = ("dag_id", "task_id", "run_id", "map_index", "try_number", "target", "resources", "environment", "submitted_at")


def _folders(path: Any) -> list[Any]:
    """The sub-folders of `path`, by name; stray files and hidden temporaries are not folders of ours."""
    try:
        return sorted((p for p in path.iterdir() if not p.name.startswith(".") and p.is_dir()), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_object(store: ArtifactStore, path: Any) -> dict[str, Any]:
    try:
        value = store.read_json(path)
    except (OSError, ValueError) as exc:
        raise InfraStoreError(f"{store.uri(path)}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise InfraStoreError(f"{store.uri(path)}: not a JSON object")
    return value


_MAP_INDEX = re.compile(r"-1|[0-9]{1,9}\Z")
_ATTEMPT = re.compile(r"[0-9]{1,9}(-[0-9]{1,9})?\Z")


class Call:
    """One map index of one task in one run: its latest try, or the try asked for."""

    def __init__(self, store: ArtifactStore, path: Any):
        self.store = store
        self.path = path

    @cached_property
    def meta(self) -> dict[str, Any]:
        meta = _read_object(self.store, self.path / CALL_META_FILE)
        missing = [key for key in _META_KEYS if key not in meta]
        if missing:
            raise InfraStoreError(f"{self.store.uri(self.path / CALL_META_FILE)}: not a call's record (no {', '.join(missing)})")
        return meta

    @cached_property
    def outcome(self) -> dict[str, Any] | None:
        """None while the call has not finished (or never did)."""
        path = self.path / OUTCOME_FILE
        return _read_object(self.store, path) if self.store.exists(path) else None

    @property
    def try_number(self) -> int:
        return int(self.meta["try_number"])

    def _finished(self) -> dict[str, Any]:
        """The outcome, or {} while there is none or it cannot be read (`status` says which)."""
        try:
            return self.outcome or {}
        except InfraStoreError:
            return {}

    @property
    def ok(self) -> bool:
        return self._finished().get("ok") is True

    @property
    def error(self) -> dict[str, Any] | None:
        error = self._finished().get("error")
        return error if isinstance(error, dict) else None

    @property
    def target(self) -> str:
        return self.meta["target"]

    @property
    def environment(self) -> dict[str, Any]:
        return {**self.meta["environment"], "hash": self.meta["environment_hash"]}

    @property
    def requested(self) -> dict[str, Any]:
        return self.meta["resources"]

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self._finished().get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    @property
    def cache_hit(self) -> dict[str, Any] | None:
        hit = self._finished().get("cache_hit")
        return hit if isinstance(hit, dict) else None

    @property
    def status(self) -> str:
        """One line: unfinished, a cache hit, ok, the failure, or what is wrong with the folder."""
        try:
            self.outcome  # noqa: B018 - read to find out whether it can be
        except InfraStoreError as exc:
            return f"broken: {exc}"
        if self.outcome is None:
            return "running/unfinished"
        if self.cache_hit:
            return f"cache hit (from {self.cache_hit.get('run_id')})"
        error = self.error or {}
        return "ok" if self.ok else f"failed: {error.get('type')}: {error.get('message')}"

    @property
    def outputs(self) -> dict[str, Any]:
        """Every output by key (one, `return_value`, unless the task had multiple outputs)."""
        if not self.ok:
            raise LookupError(f"{self.meta['task_id']} (try {self.try_number}) has no result: {self.error or 'not finished'}")
        return {o["key"]: pickle.loads(self.store.read_bytes(self.store.output_path(self.path, o))) for o in self.outcome["outputs"]}

    @property
    def result(self) -> Any:
        outputs = self.outputs
        return outputs["return_value"] if list(outputs) == ["return_value"] else outputs

    def __repr__(self) -> str:
        return f"<Call {self.meta['dag_id']}.{self.meta['task_id']}[{self.meta['map_index']}] try {self.try_number}>"


class Task:
    """A task of a run; a mapped task has one Call per map index."""

    def __init__(self, store: ArtifactStore, path: Any, task_id: str):
        self.store, self.path, self.task_id = store, path, task_id

    @property
    def map_indexes(self) -> list[int]:
        return sorted(int(p.name) for p in _folders(self.path) if _MAP_INDEX.match(p.name))

    def tries(self, map_index: int = -1) -> list[Call]:
        """The folders of this map index that hold a call.json, oldest try first."""
        found = [p for p in _folders(self.path / str(map_index)) if _ATTEMPT.match(p.name)]
        return [Call(self.store, p) for p in sorted(found, key=lambda p: attempt_order(p.name)) if self.store.exists(p / CALL_META_FILE)]

    def __getitem__(self, map_index: int) -> Call:
        tries = self.tries(map_index)
        if not tries:
            raise KeyError(map_index)
        return tries[-1]

    def _only(self) -> Call:
        return self[-1]

    # The unmapped case reads like the call itself.
    result = property(lambda self: self._only().result)
    outputs = property(lambda self: self._only().outputs)
    metrics = property(lambda self: self._only().metrics)
    environment = property(lambda self: self._only().environment)
    target = property(lambda self: self._only().target)
    requested = property(lambda self: self._only().requested)
    cache_hit = property(lambda self: self._only().cache_hit)

    def __repr__(self) -> str:
        return f"<Task {self.task_id} map indexes {self.map_indexes}>"


class Run:
    def __init__(self, store: ArtifactStore, path: Any, dag_id: str):
        self.store, self.path, self.dag_id = store, path, dag_id

    @cached_property
    def _scan(self) -> tuple[list[Call], list[str]]:
        """Every readable call of the run (latest try per map index), and what is wrong with the rest."""
        calls, problems = [], []
        for task_dir in _folders(self.path):
            task = Task(self.store, task_dir, task_dir.name)
            indexes = task.map_indexes
            if not indexes:
                problems.append(f"{self.store.uri(task_dir)}: no call in it")
            for index in indexes:
                tries = task.tries(index)
                if not tries:
                    problems.append(f"{self.store.uri(task_dir)}/{index}: no call in it")
                    continue
                try:
                    tries[-1].meta  # noqa: B018 - read now, so that a broken record is reported here
                except InfraStoreError as exc:
                    problems.append(str(exc))
                    continue
                calls.append(tries[-1])
        return calls, problems

    @property
    def _calls(self) -> list[Call]:
        return self._scan[0]

    @property
    def problems(self) -> list[str]:
        """What is wrong with folders of this run that are not a readable call (empty if nothing)."""
        return self._scan[1]

    @property
    def run_id(self) -> str:
        """The run id its calls record, or the folder's name when none can be read."""
        return self._calls[0].meta["run_id"] if self._calls else self.path.name

    @property
    def submitted_at(self) -> str | None:
        """When its first call was packaged; None when no call can be read."""
        return min((call.meta["submitted_at"] for call in self._calls), default=None)

    @property
    def tasks(self) -> dict[str, Task]:
        # Task folders are named by path_component(task_id); the call names the real id.
        out: dict[str, Task] = {}
        for call in self._calls:
            task_id = call.meta["task_id"]
            if task_id not in out:
                out[task_id] = Task(self.store, call.path.parent.parent, task_id)
        return out

    def __getitem__(self, task_id: str) -> Task:
        return Task(self.store, self.path / path_component(task_id), task_id)

    def __repr__(self) -> str:
        return f"<Run {self.dag_id} {self.run_id}>"


class Client:
    def __init__(self, url: str | None = None):
        if url is None:
            from airflow_infra.config import artifacts_url, load_config

            url = artifacts_url(load_config())
        self.store = ArtifactStore(url)

    def dags(self) -> list[str]:
        if not self.store.exists(self.store.root):
            return []
        return [p.name for p in _folders(self.store.root) if p.name not in STORE_DIRS]

    def runs(self, dag_id: str) -> list[Run]:
        """Every run of the DAG in the store, newest first; runs with no readable call last."""
        runs = [Run(self.store, p, dag_id) for p in _folders(self.store.root / path_component(dag_id))]
        return sorted(runs, key=lambda r: (r.submitted_at is not None, r.submitted_at or ""), reverse=True)

    def run(self, dag_id: str, run_id: str) -> Run:
        path = self.store.root / path_component(dag_id) / path_component(run_id)
        if not self.store.exists(path):
            raise KeyError(f"no run {run_id!r} of DAG {dag_id!r} in {self.store.url}")
        return Run(self.store, path, dag_id)

    def latest_run(self, dag_id: str) -> Run:
        runs = self.runs(dag_id)
        if not runs:
            raise KeyError(f"no runs of DAG {dag_id!r} in {self.store.url}")
        return runs[0]
