"""Decode a call's outcome: the task's return value, or the function's failure as the task's."""

from __future__ import annotations

from logging import Logger
from typing import Any

from airflow_infra.artifacts import OUTCOME_FILE, ArtifactStore, make_ref
from airflow_infra.errors import InfraTaskFailed


def read_outcome(store: ArtifactStore, folder: Any, where: str) -> dict[str, Any]:
    path = folder / OUTCOME_FILE
    if not store.exists(path):
        raise InfraTaskFailed(f"{where}: the task finished without writing {path}")
    return store.read_json(path)


def decode(
    store: ArtifactStore,
    folder: Any,
    outcome: dict[str, Any],
    *,
    requested: dict[str, Any],
    multiple_outputs: bool,
    log: Logger,
    where: str,
) -> Any:
    from airflow_infra.codeship import loads_plain
    from airflow_infra.quantities import format_bytes
    from airflow_infra.rightsizing import advice, summary

    metrics = outcome.get("metrics", {})
    served = " (when it ran, in the run served from the cache)" if outcome.get("cache_hit") else ""
    log.info("measured%s: %s", served, summary(requested, metrics))
    for hint in advice(requested, metrics):
        log.warning("right-sizing: %s", hint)
    if not outcome.get("ok"):
        error = outcome.get("error", {})
        stage = "could not load its call" if error.get("stage") == "load" else "raised"
        raise InfraTaskFailed(
            f"{where}: the function {stage} {error.get('type')}: {error.get('message')}\n{error.get('traceback', '')}"
        )
    values = {}
    for output in outcome["outputs"]:
        path = store.output_path(folder, output)
        if output["plain"]:
            values[output["key"]] = loads_plain(store.read_bytes(path))
        else:
            values[output["key"]] = make_ref(store.uri(path), output["type"], output["bytes"], output.get("sha256"))
            log.info("output %r (%s, %s) stays in the store: %s", output["key"], output["type"], format_bytes(output["bytes"]), store.uri(path))
    return values if multiple_outputs else values["return_value"]
