"""The Airflow UI plugin: per DAG and task, the plan (target, why, image, requested resources)
and, for recent runs, the measured use next to the request.

Registered through the `airflow.plugins` entry point, so every Airflow component that loads
plugins imports this module: it stays light. FastAPI and the app (airflow_infra.plugin.api)
are built only when `fastapi_apps` is first read, which only the api-server does; nothing
here parses DAGs, reads infra.yaml or asks a registry.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/infra"


def base_path(path: str) -> str:
    """`path` under the path part of `[api] base_url` (Airflow served below a prefix)."""
    from urllib.parse import urlparse

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="/") or "/"
    return urlparse(base).path.rstrip("/") + path


class _FastAPIApps:
    """`fastapi_apps`, built on first access (the api-server's), then kept."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: Any, owner: type) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_infra.plugin.api import create_app

            self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "airflow-infra"}]
        return self._apps


class InfraPlugin(AirflowPlugin):
    name = "airflow_infra"
    fastapi_apps = _FastAPIApps()
    external_views = [
        {
            "name": "Infra plans",
            "href": base_path(f"{URL_PREFIX}/"),
            "destination": "nav",
            "category": "browse",
            "url_route": "infra",
            "icon": base_path(f"{URL_PREFIX}/static/icon.svg"),
        },
        {
            # A tab on each DAG's page, showing that DAG only.
            "name": "Infra plan",
            "href": base_path(f"{URL_PREFIX}/?dag_id={{DAG_ID}}"),
            "destination": "dag",
            "url_route": "infra-plan",
            "icon": base_path(f"{URL_PREFIX}/static/icon.svg"),
        },
    ]
