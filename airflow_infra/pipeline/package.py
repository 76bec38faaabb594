"""Package a call: the function (by value, with the DAG's own code it uses) and its
arguments into call.pkl, and what ran into call.json, in a fresh folder of the store."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from logging import Logger
from typing import TYPE_CHECKING, Any

from airflow_infra.artifacts import CALL_FILE, CALL_META_FILE, REF_KEY, ArtifactStore, find_refs
from airflow_infra.errors import InfraStoreError, where
from airflow_infra.pipeline import durable
from airflow_infra.pipeline.plan import CallPlan
from airflow_infra.runtime import FAN_OUT_KEY
from airflow_infra.spec import Environment, Resources
from airflow_infra.targets.contract import Call

if TYPE_CHECKING:
    from airflow_infra.config import InfraConfig


@dataclass
class Packaged:
    call: Call
    meta: dict[str, Any]  # what call.json holds
    args: list
    kwargs: dict


def store_for(config: InfraConfig) -> ArtifactStore:
    from airflow_infra.config import artifacts_url

    # One store object per URL and process: it holds nothing but its root, whose
    # ObjectStoragePath would otherwise be made again (and, for object stores, its
    # connection looked up again) on every call.
    url = artifacts_url(config)
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = ArtifactStore(url)
    return store


_stores: dict[str, ArtifactStore] = {}


def code_roots(dag_file: str | None) -> list[str]:
    """Where the DAG's own code lives: modules loaded from there travel by value."""
    from airflow.configuration import conf

    roots = [conf.get("core", "dags_folder", fallback="")]
    if dag_file:
        roots.append(os.path.dirname(dag_file))
    return roots


def package_call(
    plan: CallPlan,
    fn: Callable,
    args: list,
    kwargs: dict,
    *,
    store: ArtifactStore,
    config: InfraConfig,
    run_id: str,
    map_index: int,
    try_number: int,
    multiple_outputs: bool,
    dag_file: str | None,
    log: Logger,
    context: Any,
    connections: Any = None,
    folder: Any = None,
    fan_out: dict[str, Any] | None = None,
) -> Packaged:
    """`folder`: where the call goes (default: a fresh one for this try). `fan_out`: the
    call runs over chunks of items already written there (pipeline.fanout): their files are
    staged with the call, like the artifacts its arguments name."""
    from airflow_infra.codeship import code_fingerprint, dumps_call
    from airflow_infra.pipeline.fanout import chunk_refs

    if folder is None:
        folder = store.task_dir(plan.dag_id, run_id, plan.task_id, map_index, try_number)
    refs = []
    for ref in find_refs([args, kwargs], whole=True):  # references arrive through XCom, which any task can write: each must be in the store
        try:
            store.path(ref[REF_KEY])
            refs += [ref[REF_KEY], *(chunk_refs(store, ref) if ref.get(FAN_OUT_KEY) else [])]
        except InfraStoreError as exc:
            raise InfraStoreError(f"{where(plan.dag_id, plan.task_id)}: an argument's artifact reference: {exc}") from None
    if fan_out is not None:
        refs += fan_out["chunks"]
    blob, modules = dumps_call(
        fn, args, kwargs, roots=code_roots(dag_file), multiple_outputs=multiple_outputs, xcom_max_bytes=config.xcom_max_bytes,
        **({"fan_out": fan_out} if fan_out is not None else {}),
    )
    # Not fsynced: only this attempt's call reads it, while it runs (a retry after a crash
    # packages the call again, into a folder of its own); call.json, the record, is.
    store.write_bytes(folder / CALL_FILE, blob, durable=False)
    meta = {
        "dag_id": plan.dag_id,
        "task_id": plan.task_id,
        "run_id": run_id,
        "map_index": map_index,
        "try_number": try_number,
        "function": f"{fn.__module__}.{fn.__qualname__}",
        "code_fingerprint": code_fingerprint(fn, modules),
        "target": plan.route.target,
        "routing_reason": plan.route.reason,
        # The variables' names only: values may be credentials, and call.json is read by
        # the plugin, the client and anyone with read access to the store.
        "environment": plan.environment.model_dump(mode="json", exclude={"env"}),
        "env_names": sorted(plan.environment.env),
        # Likewise the declared connections' ids, never their values.
        "connections": connections.ids if connections else [],
        "environment_hash": plan.environment_hash,
        "resources": plan.resources.model_dump(mode="json"),
        "refs": refs,  # the artifacts the arguments name, for a later attempt that reopens the call
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    call = Call(
        dag_id=plan.dag_id,
        task_id=plan.task_id,
        run_id=run_id,
        map_index=map_index,
        try_number=try_number,
        environment=plan.environment,
        resources=plan.resources,
        store=store,
        folder=folder,
        log=log,
        refs=tuple(refs),
        requirements_path=plan.requirements_path,
        requirements_text=plan.requirements_text,
        context=context,
        durable=durable.available(context),
        connections=connections,
        chunks=len(fan_out["chunks"]) if fan_out else 0,
        parallelism=fan_out["parallelism"] if fan_out else 0,
    )
    return Packaged(call, meta, args, kwargs)


def write_meta(packaged: Packaged) -> None:
    call = packaged.call
    call.store.write_json(call.folder / CALL_META_FILE, packaged.meta)


def reopen_call(
    store: ArtifactStore, *, dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int, log: Logger, context: Any,
    folder: Any = None,
) -> tuple[Call, dict[str, Any]]:
    """The call this try packaged before it deferred, read back from its folder (what only
    building an environment needs, the requirements file, is not: it was built before); or
    the one in `folder`, which an earlier try packaged (pipeline.durable)."""
    if folder is None:
        folder = store.task_dir(dag_id, run_id, task_id, map_index, try_number, fresh=False)
    meta = store.read_json(folder / CALL_META_FILE)
    call = Call(
        dag_id=dag_id,
        task_id=task_id,
        run_id=run_id,
        map_index=map_index,
        try_number=try_number,
        environment=Environment(**meta["environment"]),
        resources=Resources(**meta["resources"]),
        store=store,
        folder=folder,
        log=log,
        refs=tuple(meta.get("refs", ())),
        context=context,
        durable=durable.available(context),
        chunks=len(meta["fan_out"]["chunks"]) if meta.get("fan_out") else 0,
    )
    return call, meta
