"""Result caching: reuse an earlier result when code, inputs and environment all match.

    key = sha256(code fingerprint, inputs, environment hash, cache version, output shape)

Inputs are the call's arguments with each artifact reference replaced by its content hash
(or, for blobs too large to hash cheaply, its URI: a cache hit upstream hands down the
original URI, so chains of hits still match). Index entries live at
`{artifacts}/_cache/{key}.json` and point at the task directory that produced the result;
an entry whose outcome has gone is a miss.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import pickle
from typing import Any

from airflow_infra.artifacts import REF_KEY, ArtifactStore, is_ref
from airflow_infra.runtime import OUTCOME_FILE

CACHE_DIR = "_cache"


def _identity(value: Any) -> Any:
    if is_ref(value):
        return ("ref", value.get("sha256") or value[REF_KEY])
    if isinstance(value, dict):
        return ("dict", [(k, _identity(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_identity(v) for v in value])
    return value


def cache_key(
    *, fingerprint: str, args: list, kwargs: dict, environment_hash: str, version: str, multiple_outputs: bool
) -> str:
    inputs = pickle.dumps((_identity(args), sorted((k, _identity(v)) for k, v in kwargs.items())), protocol=4)
    digest = hashlib.sha256()
    for part in (fingerprint, hashlib.sha256(inputs).hexdigest(), environment_hash, version, str(multiple_outputs)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def lookup(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """The index entry and the producing call's outcome, with outputs as absolute URIs; or None."""
    entry_path = store.root / CACHE_DIR / f"{key}.json"
    if not store.exists(entry_path):
        return None
    entry = store.read_json(entry_path)
    source = store.path(entry["task_dir"])
    outcome_path = source / OUTCOME_FILE
    if not store.exists(outcome_path):
        return None
    outcome = store.read_json(outcome_path)
    if not outcome.get("ok"):
        return None
    outputs = [{**o, "uri": store.uri(store.output_path(source, o))} for o in outcome["outputs"]]
    if not all(store.exists(store.path(o["uri"])) for o in outputs):
        return None
    return {**entry, "outcome": {**outcome, "outputs": outputs}}


def record(store: ArtifactStore, key: str, task_dir: Any, call_meta: dict[str, Any]) -> None:
    entry = {
        "key": key,
        "task_dir": store.uri(task_dir),
        "dag_id": call_meta["dag_id"],
        "task_id": call_meta["task_id"],
        "run_id": call_meta["run_id"],
        "map_index": call_meta["map_index"],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    store.write_json(store.root / CACHE_DIR / f"{key}.json", entry)
