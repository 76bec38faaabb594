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
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The wire format lives in runtime (it runs where this package is not installed); the rest
# of the package takes these names from here.
from airflow_infra.errors import InfraStoreError
from airflow_infra.runtime import OUTCOME_FILE, REF_KEY, atomic_write, map_refs  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

CALL_FILE = "call.pkl"
CALL_META_FILE = "call.json"
HANDLE_FILE = "handle.json"
CACHE_DIR = "~result-cache"  # {artifacts}/~result-cache/{key}.json: the result cache's index (see path_component)
AUTOSIZE_DIR = "~autosize"  # {artifacts}/~autosize/{dag}/{task}/: measured use, for automatic requests (pipeline.autosize)
STORE_DIRS = (CACHE_DIR, AUTOSIZE_DIR)  # the store's own folders beside the DAGs' folders
_LOCAL = ("file", "local", "")
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}\Z")  # ObjectStoragePath protocols of the local filesystem
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LONGEST = 200  # bytes; a path component may have 255


def path_component(value: str) -> str:
    """A DAG, run or task id as one path component, and a different one for every id.

    Characters other than [A-Za-z0-9._-] become ~XX (their UTF-8 bytes in hex): "run:a" is
    "run~3aa", never "run_a"; '~' is escaped too, so the mapping can be undone and two ids
    never share a folder. The store's own folders are '~' and a letter no escape starts with
    (STORE_DIRS), so no id can name them; "", "." and ".." are escaped whole. An escaped id
    longer than _LONGEST keeps its start and ends in "~~" and its SHA-256 ("~~" is not an escape).
    """
    if value in ("", ".", ".."):
        return "~" + "~".join(f"{b:02x}" for b in value.encode())
    out = _UNSAFE.sub(lambda m: "".join(f"~{b:02x}" for b in m.group().encode("utf-8", "surrogatepass")), value)
    if len(out) > _LONGEST:
        out = f"{out[:_LONGEST - 66]}~~{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"
    return out


def attempt_order(name: str) -> tuple[int, int]:
    """Sort key of a call folder name: '3' before '3-2' before '4'."""
    try_number, _, attempt = name.partition("-")
    return int(try_number), int(attempt or 1)


def make_ref(uri: str, type_name: str, size: int, sha256: str | None = None) -> dict[str, Any]:
    """What XCom carries for a value that stays in the store."""
    return {REF_KEY: uri, "type": type_name, "bytes": size, "sha256": sha256}


def find_refs(value: Any, *, whole: bool = False) -> list[Any]:
    """Every artifact URI referenced anywhere inside nested lists, tuples and dicts (with
    `whole`, the references themselves)."""
    found: list[Any] = []
    map_refs(value, lambda ref: found.append(ref if whole else ref[REF_KEY]))
    return found


class ArtifactStore:
    def __init__(self, url: str):
        from airflow.sdk import ObjectStoragePath

        self.url = url.rstrip("/")
        self.root = ObjectStoragePath(self.url)
        # Decided once: every read, write and existence check of a call asks.
        self.is_local = self.root.protocol in _LOCAL

    def local_path(self, path: ObjectStoragePath) -> Path:
        """The filesystem path of a location in a local store."""
        return Path(path.path)

    def task_dir(
        self, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int, *, fresh: bool = True
    ) -> ObjectStoragePath:
        """A fresh folder for this call: `{try}`, or `{try}-2`, `{try}-3`... when that try ran
        before (`airflow tasks test` re-runs a try without counting it): nothing is overwritten.
        With fresh=False: the latest existing folder of this try (to resume a deferred call)."""
        # Probed as relative strings, and one path object made for the folder found: each
        # `/` on an ObjectStoragePath costs tens of microseconds, and components are single
        # path segments (path_component), so the joined string means the same path.
        base = f"{path_component(dag_id)}/{path_component(run_id)}/{path_component(task_id)}/{map_index}"
        name, attempt = str(try_number), 1
        while self._exists_under_root(f"{base}/{name}/{CALL_META_FILE}"):
            previous = name
            attempt += 1
            name = f"{try_number}-{attempt}"
            if not fresh and not self._exists_under_root(f"{base}/{name}/{CALL_META_FILE}"):
                return self.root / f"{base}/{previous}"
        return self.root / f"{base}/{name}"

    def _exists_under_root(self, relative: str) -> bool:
        if self.is_local:
            return os.path.exists(os.path.join(self.root.path, relative))
        return self.exists(self.root / relative)

    def uri(self, path: ObjectStoragePath) -> str:
        return str(path)

    def output_path(self, task_dir: ObjectStoragePath, output: dict[str, Any]) -> ObjectStoragePath:
        """Where an output described in outcome.json lives: its own URI (a cache hit), else its
        file in the call's folder. outcome.json is written where the task ran: neither may
        lead out of the store, nor the file out of its folder."""
        if output.get("uri"):
            return self.path(output["uri"])
        name = output.get("file")
        if not (isinstance(name, str) and _FILE_NAME.match(name) and name not in (".", "..")):
            raise InfraStoreError(f"{self.uri(task_dir)}: an output names the file {name!r}, which is not a file of its call's folder")
        return task_dir / name

    def path(self, uri: str) -> ObjectStoragePath:
        """The location `uri` names, which must lie inside this store.

        Every location read from something stored or passed along (an artifact reference in
        XCom or in arguments, a cache entry, an outcome, a stored handle) is turned into a
        path here, and only here: a URI of another store or bucket, a relative or absolute
        path, or one with '.', '..' or empty segments is refused.
        """
        prefix = str(self.root).rstrip("/") + "/"
        rest = uri[len(prefix):] if isinstance(uri, str) and uri.startswith(prefix) else None
        if not rest or "\0" in rest or any(part in ("", ".", "..") for part in rest.split("/")):
            raise InfraStoreError(
                f"refusing to read {str(uri)[:200]!r}: it is not a location inside the artifact store {prefix!r} "
                "(store contents and references are checked, because any task can write them)"
            )
        return self.root / rest

    def write_bytes(self, path: ObjectStoragePath, data: bytes, *, durable: bool = True) -> None:
        """Write `path` atomically. On a local store, `durable` (the default) also fsyncs it
        before the rename, so that after a crash of this machine the file is there whole or
        not at all. durable=False is for files that only this attempt of the call reads while
        it runs (call.pkl, handle.json on a local store: the call they describe is a process
        or container of this machine, gone with it); object stores ignore it (a PUT is whole)."""
        if self.is_local:
            atomic_write(path.path, data, durable=durable)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def write_json(self, path: ObjectStoragePath, data: Any) -> None:
        self.write_bytes(path, json.dumps(data, indent=1, sort_keys=True, default=str).encode())

    def read_bytes(self, path: ObjectStoragePath) -> bytes:
        if self.is_local and path.protocol in _LOCAL:  # the same bytes, without fsspec's layers (a few reads per call)
            with open(path.path, "rb") as fh:
                return fh.read()
        return path.read_bytes()

    def read_json(self, path: ObjectStoragePath) -> Any:
        return json.loads(self.read_bytes(path))

    def exists(self, path: ObjectStoragePath) -> bool:
        if self.is_local and path.protocol in _LOCAL:
            return os.path.exists(path.path)
        return path.exists()

    def remove_tree(self, path: ObjectStoragePath) -> None:
        path.fs.rm(path.path, recursive=True)

    def download(self, path: ObjectStoragePath, dest: Path) -> Path:
        # Into a scratch folder that this attempt removes when the call ends: an fsync would
        # make durable what nobody reads after a crash (the store keeps the original).
        atomic_write(dest, self.read_bytes(path), durable=False)
        return dest

    def upload(self, src: Path, path: ObjectStoragePath) -> None:
        self.write_bytes(path, src.read_bytes())
