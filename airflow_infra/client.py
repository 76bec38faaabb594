"""Read past runs from the artifact store, without the Airflow database.

    from airflow_infra.client import Client

    client = Client()                          # the store infra.yaml names (or Client("s3://..."))
    run = client.latest_run("recsys_seed")     # or client.runs("recsys_seed")[i], client.run(dag, run_id)
    run["ensemble"].result                     # the task's return value (latest try)
    run["count_words"][2].result               # map index 2 of a mapped task
    run["fit_a"].metrics, run["fit_a"].environment, run["fit_a"].target

Results are unpickled in the calling process, so it needs the packages the values are
made of (a pandas DataFrame needs pandas).
"""

from __future__ import annotations

import pickle
from functools import cached_property
from typing import Any

from airflow_infra.artifacts import (
    CACHE_DIR,
    CALL_META_FILE,
    OUTCOME_FILE,
    ArtifactStore,
    attempt_order,
    path_component,
)


class Call:
    """One map index of one task in one run: its latest try, or the try asked for."""

    def __init__(self, store: ArtifactStore, path: Any):
        self.store = store
        self.path = path

    @cached_property
    def meta(self) -> dict[str, Any]:
        return self.store.read_json(self.path / CALL_META_FILE)

    @cached_property
    def outcome(self) -> dict[str, Any] | None:
        """None while the call has not finished (or never did)."""
        path = self.path / OUTCOME_FILE
        return self.store.read_json(path) if self.store.exists(path) else None

    @property
    def try_number(self) -> int:
        return int(self.meta["try_number"])

    @property
    def ok(self) -> bool:
        return bool(self.outcome and self.outcome.get("ok"))

    @property
    def error(self) -> dict[str, Any] | None:
        return None if self.outcome is None else self.outcome.get("error")

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
        return (self.outcome or {}).get("metrics", {})

    @property
    def cache_hit(self) -> dict[str, Any] | None:
        return (self.outcome or {}).get("cache_hit")

    @property
    def status(self) -> str:
        """One line: unfinished, a cache hit, ok, or the failure."""
        if self.outcome is None:
            return "running/unfinished"
        if self.cache_hit:
            return f"cache hit (from {self.cache_hit['run_id']})"
        return "ok" if self.ok else f"failed: {self.error.get('type')}: {self.error.get('message')}"

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
        return sorted(int(p.name) for p in self.path.iterdir())

    def tries(self, map_index: int = -1) -> list[Call]:
        base = self.path / str(map_index)
        return [Call(self.store, p) for p in sorted(base.iterdir(), key=lambda p: attempt_order(p.name))]

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
    def _first_call(self) -> Call:
        for task_dir in self.path.iterdir():
            for index_dir in task_dir.iterdir():
                for try_dir in index_dir.iterdir():
                    if self.store.exists(try_dir / CALL_META_FILE):
                        return Call(self.store, try_dir)
        raise LookupError(f"run folder {self.path} holds no call")

    @property
    def run_id(self) -> str:
        return self._first_call.meta["run_id"]

    @property
    def submitted_at(self) -> str:
        return min(
            Call(self.store, t).meta["submitted_at"]
            for task in self.path.iterdir()
            for i in task.iterdir()
            for t in i.iterdir()
            if self.store.exists(t / CALL_META_FILE)
        )

    @property
    def tasks(self) -> dict[str, Task]:
        # Task folders are named by path_component(task_id); the call names the real id.
        out = {}
        for task_dir in sorted(self.path.iterdir(), key=lambda p: p.name):
            task = Task(self.store, task_dir, task_dir.name)
            task.task_id = task[task.map_indexes[0]].meta["task_id"]
            out[task.task_id] = task
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
        return sorted(p.name for p in self.store.root.iterdir() if p.name != CACHE_DIR)

    def runs(self, dag_id: str) -> list[Run]:
        """Every run of the DAG in the store, newest first."""
        base = self.store.root / path_component(dag_id)
        if not self.store.exists(base):
            return []
        runs = [Run(self.store, p, dag_id) for p in base.iterdir()]
        return sorted(runs, key=lambda r: r.submitted_at, reverse=True)

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
