"""What the plugin page shows, as JSON-ready dicts (no FastAPI here).

Plans come from the DAG files' declarations, read by `plugin.parse` in a fresh interpreter
that holds none of the api-server's secrets (DAG authors' code never runs with the
api-server's rights), and planned here with `pipeline.plan`, as `airflow-infra plan` does.
Measured use comes from the artifact store (`airflow_infra.client`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_infra.pipeline.plan import TaskPlan

PARSE_TIMEOUT = 60.0


def plan_json(plan: TaskPlan) -> dict[str, Any]:
    call = plan.call
    env = call.environment if call else None
    return {
        "task_id": plan.task_id,
        "mapped": plan.mapped,
        "target": call.route.target if call else None,
        "kind": call.kind.name if call else None,
        "reason": call.route.reason if call else None,
        "image": plan.reference,
        "needs_image": plan.needs_image,
        "exists": plan.exists,
        "requested": call.resources.model_dump(exclude_none=True) if call else {},
        "templated": plan.templates,
        "environment": None
        if env is None
        else {
            "packages": list(env.packages),
            "requirements": env.requirements,
            "apt_packages": list(env.apt_packages),
            "python": env.python,
            "base_image": env.base_image,
            "env": sorted(env.env),  # names only: values may be credentials
        },
        "error": plan.error,
    }


def plan_files(files: dict[str, list[str]], check: bool, timeout: float = PARSE_TIMEOUT) -> dict[str, dict[str, Any]]:
    """{path: {"dags": {dag_id: [plan, ...]}} or {"error": ...}} for the wanted DAGs of each file.

    Existence is asked (registry or engine) only for tasks whose target needs an image."""
    from airflow.configuration import conf

    from airflow_infra.config import load_config
    from airflow_infra.errors import InfraError
    from airflow_infra.pipeline.plan import check_images, plan_declarations
    from airflow_infra.plugin.parse import parse_files

    try:
        config = load_config()
    except InfraError as exc:
        return {path: {"error": str(exc)} for path in files}
    out: dict[str, dict[str, Any]] = {}
    for path, answer in parse_files(files, conf.get("core", "dags_folder"), timeout).items():
        if "error" in answer:
            out[path] = answer
            continue
        plans = {dag_id: plan_declarations(dag_id, path, tasks, config) for dag_id, tasks in answer["dags"].items()}
        if check:
            check_images([p for dag_plans in plans.values() for p in dag_plans], config)
        out[path] = {"dags": {dag_id: [plan_json(p) for p in dag_plans] for dag_id, dag_plans in plans.items()}}
    return out


def dag_files(dag_ids: Iterable[str], session: Any) -> dict[str, str | None]:
    """{dag_id: file} for the DAGs the database knows and still has in a bundle."""
    from airflow.models.dag import DagModel
    from sqlalchemy import select

    rows = session.execute(
        select(DagModel.dag_id, DagModel.fileloc).where(DagModel.dag_id.in_(list(dag_ids)), ~DagModel.is_stale)
    )
    return dict(rows.all())


def plans(dag_ids: Iterable[str], session: Any, check: bool = True) -> list[dict[str, Any]]:
    """Per DAG (sorted by id), its infra tasks' plans; DAGs without infra tasks are left out."""
    by_file: dict[str | None, list[str]] = defaultdict(list)
    for dag_id, path in dag_files(dag_ids, session).items():
        by_file[path].append(dag_id)
    out = []
    present = {path: ids for path, ids in by_file.items() if path and os.path.exists(path)}
    for path, ids in by_file.items():
        if path not in present:
            out += [{"dag_id": d, "file": path, "plans": [], "error": f"DAG file {path} is not on the api-server"} for d in ids]
    for path, found in (plan_files(present, check) if present else {}).items():
        if "error" in found:
            out += [{"dag_id": d, "file": path, "plans": [], "error": found["error"]} for d in present[path]]
            continue
        out += [{"dag_id": d, "file": path, "plans": p, "error": None} for d, p in found["dags"].items() if p]
    return sorted(out, key=lambda d: d["dag_id"])


def runs(dag_id: str, limit: int = 5) -> list[dict[str, Any]]:
    """The DAG's latest runs in the artifact store: per call, requested vs measured, and hints."""
    from airflow_infra.client import Client
    from airflow_infra.rightsizing import advice

    out = []
    for run in Client().runs(dag_id)[:limit]:
        calls = []
        for task_id, task in run.tasks.items():
            for index in task.map_indexes:
                call = task[index]
                calls.append(
                    {
                        "task_id": task_id,
                        "map_index": index,
                        "try_number": call.try_number,
                        "target": call.target,
                        "ok": call.ok,
                        "status": call.status,
                        "requested": call.requested,
                        # Where the memory request came from when on_oom escalated it: {"from", "to", "after_try", ...}
                        "escalated": call.meta.get("escalated"),
                        # memory="auto" / cpu="auto": what each came to and from which runs (pipeline.autosize)
                        "autosized": call.meta.get("autosized"),
                        "measured": call.metrics,
                        "hints": advice(call.requested, call.metrics),
                        "fan_out": fan_out_view(call),
                    }
                )
        out.append({"run_id": run.run_id, "submitted_at": run.submitted_at, "calls": calls, "problems": run.problems})
    return out


FAILED_SHOWN = 20


def fan_out_view(call: Any) -> dict[str, Any] | None:
    """A fan-out's counts, its items' measurements in brief (quantiles, the slowest) and its
    failed items with their first errors (pipeline/fanout.py); None for a single call."""
    from airflow_infra.pipeline.fanout import MANIFEST

    try:
        outcome = call.outcome or {}
    except Exception:  # noqa: BLE001 - an unreadable outcome is shown as the call's status already
        return None
    if not outcome.get("fan_out"):
        return None
    try:
        manifest = call.store.read_json(call.path / MANIFEST)
        failed, errors = list(manifest.get("failed") or [])[:FAILED_SHOWN], manifest.get("errors") or {}
    except Exception:  # noqa: BLE001 - the counts still show; the manifest's own problem is the store's
        failed, errors = [], {}
    return {**outcome["fan_out"], "measured": outcome.get("items_measured") or {}, "failed_items": failed,
            "errors": {k: {"type": v.get("type"), "message": v.get("message")} for k, v in errors.items() if isinstance(v, dict)}}
