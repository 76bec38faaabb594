"""The artifact store: every call's inputs and outputs, laid out by run.

    {artifacts}/{dag_id}/{run_id}/{task_id}/{map_index}/{try_number}/
        call.pkl       the function and its arguments (cloudpickle)
        call.json      what ran: function, environment hash, target, resources
        handle.json    how to find the running call again (its target's handle)
        out-0.pkl ...  each output (one, or one per key with multiple_outputs)
        outcome.json   written last: ok or error, outputs, measured resources

Any `ObjectStoragePath` URL works (file://, s3://conn@bucket/prefix, ...). Writes are
atomic: on a local filesystem through a temporary file and a rename, on object stores
because a PUT is. A directory with no outcome.json is a call that has not finished.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The wire format lives in runtime (it runs where this package is not installed); the rest
# of the package takes these names from here.
from airflow_infra.runtime import OUTCOME_FILE, REF_KEY, atomic_write, map_refs

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

CALL_FILE = "call.pkl"
CALL_META_FILE = "call.json"
HANDLE_FILE = "handle.json"
CACHE_DIR = "_cache"  # {artifacts}/_cache/{key}.json: the result cache's index
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def path_component(value: str) -> str:
    """A run or task id as one safe path component; a changed id gets a short hash so two never collide."""
    safe = _UNSAFE.sub("_", value)
    if safe != value or safe in ("", ".", ".."):
        safe = f"{safe}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return safe


def attempt_order(name: str) -> tuple[int, int]:
    """Sort key of a call folder name: '3' before '3-2' before '4'."""
    try_number, _, attempt = name.partition("-")
    return int(try_number), int(attempt or 1)


def make_ref(uri: str, type_name: str, size: int, sha256: str | None = None) -> dict[str, Any]:
    """What XCom carries for a value that stays in the store."""
    return {REF_KEY: uri, "type": type_name, "bytes": size, "sha256": sha256}


def find_refs(value: Any) -> list[str]:
    """Every artifact URI referenced anywhere inside nested lists, tuples and dicts."""
    found: list[str] = []
    map_refs(value, lambda ref: found.append(ref[REF_KEY]))
    return found


class ArtifactStore:
    def __init__(self, url: str):
        from airflow.sdk import ObjectStoragePath

        self.url = url.rstrip("/")
        self.root = ObjectStoragePath(self.url)

    @property
    def is_local(self) -> bool:
        return self.root.protocol in ("file", "local", "")

    def local_path(self, path: ObjectStoragePath) -> Path:
        """The filesystem path of a location in a local store."""
        return Path(path.path)

    def task_dir(
        self, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int, *, fresh: bool = True
    ) -> ObjectStoragePath:
        """A fresh folder for this call: `{try}`, or `{try}-2`, `{try}-3`... when that try ran
        before (`airflow tasks test` re-runs a try without counting it): nothing is overwritten.
        With fresh=False: the latest existing folder of this try (to resume a deferred call)."""
        base = self.root / path_component(dag_id) / path_component(run_id) / path_component(task_id) / str(map_index)
        path, attempt = base / str(try_number), 1
        while self.exists(path / CALL_META_FILE):
            previous = path
            attempt += 1
            path = base / f"{try_number}-{attempt}"
            if not fresh and not self.exists(path / CALL_META_FILE):
                return previous
        return path

    def uri(self, path: ObjectStoragePath) -> str:
        return str(path)

    def output_path(self, task_dir: ObjectStoragePath, output: dict[str, Any]) -> ObjectStoragePath:
        """Where an output described in outcome.json lives: its own URI (a cache hit), else its file."""
        return self.path(output["uri"]) if output.get("uri") else task_dir / output["file"]

    def path(self, uri: str) -> ObjectStoragePath:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(uri)

    def write_bytes(self, path: ObjectStoragePath, data: bytes) -> None:
        if self.is_local:
            atomic_write(self.local_path(path), data)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def write_json(self, path: ObjectStoragePath, data: Any) -> None:
        self.write_bytes(path, json.dumps(data, indent=1, sort_keys=True, default=str).encode())

    def read_bytes(self, path: ObjectStoragePath) -> bytes:
        return path.read_bytes()

    def read_json(self, path: ObjectStoragePath) -> Any:
        return json.loads(self.read_bytes(path))

    def exists(self, path: ObjectStoragePath) -> bool:
        return path.exists()

    def remove_tree(self, path: ObjectStoragePath) -> None:
        path.fs.rm(path.path, recursive=True)

    def download(self, path: ObjectStoragePath, dest: Path) -> Path:
        atomic_write(dest, self.read_bytes(path))
        return dest

    def upload(self, src: Path, path: ObjectStoragePath) -> None:
        self.write_bytes(path, src.read_bytes())
