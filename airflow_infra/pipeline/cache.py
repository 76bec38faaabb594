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

from airflow_infra.artifacts import CACHE_DIR, CALL_META_FILE, OUTCOME_FILE, REF_KEY, ArtifactStore, map_refs
from airflow_infra.errors import InfraStoreError


def _identity(value: Any) -> Any:
    """The value with each reference replaced by what identifies its content."""
    return map_refs(value, lambda ref: {"__ref_identity__": ref.get("sha256") or ref[REF_KEY]})


def key_for(setting: bool | str, meta: dict[str, Any], args: list, kwargs: dict, multiple_outputs: bool) -> str | None:
    """The call's cache key, or None when the task does not cache (`cache=False`)."""
    if setting is False:
        return None
    return cache_key(
        fingerprint=meta["code_fingerprint"],
        args=args,
        kwargs=kwargs,
        environment_hash=meta["environment_hash"],
        version="" if setting is True else str(setting),
        multiple_outputs=bool(multiple_outputs),
    )


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


def serve(store: ArtifactStore, folder: Any, meta: dict[str, Any], key: str, log: Any) -> dict[str, Any] | None:
    """On a hit, record this call as served from the cache (its call.json and outcome.json)
    and return the outcome; on a miss, note the key in `meta` for `record` after the run."""
    try:
        hit = lookup(store, key)
    except (InfraStoreError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # The index is writable by every task: an entry that is broken or leads out of the
        # store is a miss (and is replaced by this call's entry), never a reason to fail.
        log.warning("cache entry %s ignored: %s", key[:12], exc)
        hit = None
    meta["cache"] = {"key": key, "hit": hit is not None}
    if hit is None:
        log.info("cache miss (key %s): running", key[:12])
        return None
    source = {k: hit[k] for k in ("dag_id", "task_id", "run_id", "map_index", "task_dir")}
    log.info(
        "cache hit: reusing the result of run %r (DAG %r, task %r, map index %s) from %s",
        source["run_id"], source["dag_id"], source["task_id"], source["map_index"], source["task_dir"],
    )
    meta["cache"]["from"] = source
    store.write_json(folder / CALL_META_FILE, meta)
    outcome = {**hit["outcome"], "cache_hit": source}
    store.write_json(folder / OUTCOME_FILE, outcome)
    return outcome


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
