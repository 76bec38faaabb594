"""What the plugin page shows, as JSON-ready dicts (no FastAPI here).

Plans come from parsing the DAG files with DagBag and `planning.plan_dag`, as
`airflow-infra plan` does, because the serialized DAGs in the database do not keep the
declarations (packages, target). The parse runs in a forked child of the api-server: DAG
authors' code never runs in the api-server's own process, a file that hangs or exits costs
one request, and the child starts with Airflow already imported, so a parse takes
milliseconds. Measured use comes from the artifact store (`airflow_infra.client`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_infra.pipeline.plan import TaskPlan

PARSE_TIMEOUT = 60.0


class ChildFailed(RuntimeError):
    pass


def in_child(fn: Callable[[], Any], timeout: float = PARSE_TIMEOUT) -> Any:
    """Run `fn` in a forked child and return its JSON-able result (or raise ChildFailed)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        try:
            payload = json.dumps({"ok": fn()})
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            payload = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        with os.fdopen(write_fd, "w") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise ChildFailed(f"gave up after {timeout:g}s")
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not chunks:
        raise ChildFailed("the child process died without an answer")
    answer = json.loads(b"".join(chunks))
    if "error" in answer:
        raise ChildFailed(answer["error"])
    return answer["ok"]


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


def plan_file(path: str, dag_ids: Iterable[str], check: bool) -> dict[str, Any]:
    """Parse one DAG file and plan the wanted DAGs in it: {dag_id: [plan, ...]}, or {"error": ...}.

    Existence is asked (registry or engine) only for tasks whose target needs an image."""
    from airflow_infra.config import load_config
    from airflow_infra.errors import InfraError
    from airflow_infra.pipeline.plan import check_images, load_dags, plan_dag

    try:
        config = load_config()
        dags = [dag for dag in load_dags(path) if dag.dag_id in set(dag_ids)]
    except InfraError as exc:
        return {"error": str(exc)}
    plans = {dag.dag_id: plan_dag(dag, config) for dag in dags}
    flat = [p for dag_plans in plans.values() for p in dag_plans]
    if check:
        check_images(flat, config)
    return {"dags": {dag_id: [plan_json(p) for p in dag_plans] for dag_id, dag_plans in plans.items()}}


def dag_files(dag_ids: Iterable[str], session: Any) -> dict[str, str | None]:
    """{dag_id: file} for the DAGs the database knows and still has in a bundle."""
    from airflow.models.dag import DagModel
    from sqlalchemy import select

    rows = session.execute(
        select(DagModel.dag_id, DagModel.fileloc).where(DagModel.dag_id.in_(list(dag_ids)), ~DagModel.is_stale)
    )
    return dict(rows.all())


def _warm() -> None:
    """Import in the api-server what every parse needs (Airflow's and this provider's code, no
    DAG code), so each forked child starts with it: ~50 ms a file instead of ~500 ms."""
    import airflow.dag_processing.dagbag  # noqa: F401

    import airflow_infra.decorator  # noqa: F401
    import airflow_infra.images.service  # noqa: F401


def plans(dag_ids: Iterable[str], session: Any, check: bool = True) -> list[dict[str, Any]]:
    """Per DAG (sorted by id), its infra tasks' plans; DAGs without infra tasks are left out."""
    _warm()
    by_file: dict[str | None, list[str]] = defaultdict(list)
    for dag_id, path in dag_files(dag_ids, session).items():
        by_file[path].append(dag_id)
    out = []
    for path, ids in by_file.items():
        if not path or not os.path.exists(path):
            out += [{"dag_id": d, "file": path, "plans": [], "error": f"DAG file {path} is not on the api-server"} for d in ids]
            continue
        try:
            found = in_child(lambda: plan_file(path, ids, check))  # noqa: B023 - called before the loop moves on
        except ChildFailed as exc:
            found = {"error": f"parsing {path}: {exc}"}
        if "error" in found:
            out += [{"dag_id": d, "file": path, "plans": [], "error": found["error"]} for d in ids]
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
                        "measured": call.metrics,
                        "hints": advice(call.requested, call.metrics),
                    }
                )
        out.append({"run_id": run.run_id, "submitted_at": run.submitted_at, "calls": calls})
    return out
