"""The Airflow connections a task declares (connections=[...]): looked up when the task runs,
through Airflow's secrets backends, and handed to the target's delivery, never packaged.

Their values never enter call.pkl, call.json, the handle, an image, a spec or a log. Each
target kind delivers them its own way (Runner.delivers_connections says it can):
  local    in the request the warm runtime server forks the call from (a socket, in memory)
  docker   written to the container's standard input once it has started
  kubernetes  a short-lived Secret per call, owned by the pod, mounted read-only (targets/kubernetes/secrets.py)
  batch    a Secrets Manager secret per call, referenced from a job definition revision of
           its own, which Batch injects as a variable the runtime unsets (targets/batch/secrets.py)
A kind that cannot deliver them refuses the call before anything is built or submitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow_infra.errors import InfraSpecError, InfraTaskFailed

FIELDS = ("conn_type", "host", "login", "password", "port", "schema")


class ConnectionValues:
    """The declared connections' values, {conn_id: {field: value, "extra": {...}}}. Its repr
    names the connections only: a Call that holds it may be printed or logged."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, dict[str, Any]]):
        self._values = values

    @property
    def ids(self) -> list[str]:
        return list(self._values)

    def document(self) -> dict[str, dict[str, Any]]:
        """What the runtime reads (runtime.install_connections): plain JSON-able values."""
        return self._values

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:
        return f"ConnectionValues({self.ids!r})"


def resolve_connections(conn_ids: Iterable[str], where: str) -> ConnectionValues:
    """Each declared connection, through Airflow's secrets backends (env AIRFLOW_CONN_*, the
    metadata DB, a configured backend), as the task runs. A missing one fails the task here,
    naming it, before anything is written to the store or submitted."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    values: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for conn_id in conn_ids:
        try:
            conn = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            missing.append(conn_id)
            continue
        fields = {name: getattr(conn, name, None) for name in FIELDS}
        try:
            fields["extra"] = dict(conn.extra_dejson or {})
        except (TypeError, ValueError):  # an extra that is not a JSON object
            fields["extra"] = {}
        values[conn_id] = fields
    if missing:
        raise InfraTaskFailed(
            f"{where}: connections: no Airflow connection {', '.join(map(repr, missing))} (looked up through "
            "Airflow's secrets backends: AIRFLOW_CONN_* variables, the metadata database, any configured backend); "
            "create it, or remove it from connections=[...]"
        )
    return ConnectionValues(values)


def require_delivery(runner_class: type, target_config: Any, target: str, kind: str, conn_ids: list[str], where: str) -> None:
    """Refuse, before anything is built or submitted, a call whose target cannot deliver its
    connections (its kind cannot, or this target lacks a setting it needs): the function
    would run without them."""
    if not conn_ids:
        return
    if not getattr(runner_class, "delivers_connections", False):
        refusal = "its kind cannot (local, docker, kubernetes and batch can); pin the task to such a target, or leave connections out"
    else:
        refusal = runner_class.connections_refusal(target_config)
    if refusal:
        raise InfraSpecError(
            f"{where}: connections={conn_ids!r}: target {target!r} (kind {kind!r}) cannot deliver Airflow connections "
            f"to a task: {refusal}"
        )
