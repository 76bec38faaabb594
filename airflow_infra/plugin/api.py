"""The plugin's FastAPI app, mounted by the api-server at /infra.

The page (static HTML and JS, no build step) holds no data; every JSON endpoint is behind
Airflow's own authentication and DAG permissions (the api-server's security dependencies):
the UI's session cookie or an `Authorization: Bearer` token from `POST /auth/token`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from airflow_infra.plugin import report

STATIC = Path(__file__).parent / "static"
CheckQuery = Annotated[bool, Query(description="ask the registry (or engine) whether each needed image exists")]


def create_app() -> FastAPI:
    app = FastAPI(
        title="airflow-infra",
        description="Plans of infra tasks (target, rule, image, requested resources) and the measured "
        "resources of recent runs. Authenticated like Airflow's own API.",
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/plans", summary="Plans of every readable DAG with infra tasks")
    def all_plans(user: GetUserDep, session: SessionDep, check: CheckQuery = True) -> dict[str, Any]:
        readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
        return {"dags": report.plans(readable, session, check)}

    @app.get(
        "/api/dags/{dag_id}/plans",
        summary="Plans of one DAG's infra tasks",
        dependencies=[Depends(requires_access_dag("GET"))],
    )
    def dag_plans(dag_id: str, session: SessionDep, check: CheckQuery = True) -> dict[str, Any]:
        if not report.dag_files([dag_id], session):
            raise HTTPException(404, f"DAG {dag_id!r} not found")
        return {"dags": report.plans([dag_id], session, check)}

    @app.get(
        "/api/dags/{dag_id}/runs",
        summary="Requested vs measured resources of the DAG's latest runs (from the artifact store)",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
    )
    def dag_runs(dag_id: str, limit: Annotated[int, Query(ge=1, le=50)] = 5) -> dict[str, Any]:
        return {"dag_id": dag_id, "runs": report.runs(dag_id, limit)}

    return app
