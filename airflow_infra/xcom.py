"""An XCom backend that hands ordinary tasks the value behind an artifact reference.

A result too large (or too rich) for XCom stays in the artifact store, and XCom holds a
reference. @infra_task tasks load references inside their own environment; with

    [core] xcom_backend = airflow_infra.xcom.InfraXComBackend

any other task (a plain @task, a classic operator's template) receives the value itself,
loaded in the worker, which then needs the packages the value is made of.
"""

from __future__ import annotations

import contextvars
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk.bases.xcom import BaseXCom

from airflow_infra.artifacts import REF_KEY, find_refs, map_refs

_KEEP_REFERENCES = contextvars.ContextVar("airflow_infra_keep_references", default=False)


@contextmanager
def keep_references() -> Iterator[None]:
    """Within this block XCom pulls return references as they are (what InfraOperator wants)."""
    token = _KEEP_REFERENCES.set(True)
    try:
        yield
    finally:
        _KEEP_REFERENCES.reset(token)


def load_references(value: Any) -> Any:
    """`value` with each reference replaced by the value it names, read from the configured
    artifact store (a reference naming anything outside it is refused: XCom is writable by
    any task)."""
    from airflow_infra.config import load_config
    from airflow_infra.pipeline.package import store_for

    if not find_refs(value):
        return value
    store = store_for(load_config())
    return map_refs(value, lambda ref: pickle.loads(store.read_bytes(store.path(ref[REF_KEY]))))


class InfraXComBackend(BaseXCom):
    @staticmethod
    def deserialize_value(result: Any) -> Any:
        value = BaseXCom.deserialize_value(result)
        return value if _KEEP_REFERENCES.get() else load_references(value)
