"""A task's declaration: the declared fields out of operator arguments, checked at parse time
(no network, Docker or registry: only what the declaration and the DAG folder tell)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_infra.errors import InfraSpecError, where
from airflow_infra.spec import (
    ENVIRONMENT_FIELDS,
    RESOURCE_FIELDS,
    TARGET_NAME,
    WORKER_PYTHON,
    Environment,
    Resources,
    build_models,
    flatten,
)

DECLARED_FIELDS = (*ENVIRONMENT_FIELDS, *RESOURCE_FIELDS)
# The class attribute that marks an operator as an infra task (planners look for it).
INFRA_TASK = "is_infra_task"


def declaration_from(kwargs: dict[str, Any], dag_id: str | None, task_id: str | None) -> dict[str, Any]:
    """Pop the declared fields (and the grouped Environment/Resources forms) out of operator kwargs."""
    declared = {name: kwargs.pop(name) for name in DECLARED_FIELDS if name in kwargs}
    grouped = {}
    if isinstance(kwargs.get("environment"), Environment):
        grouped.update(flatten(kwargs.pop("environment"), None))
    if isinstance(kwargs.get("resources"), Resources):  # BaseOperator's own `resources` stays untouched
        grouped.update(flatten(None, kwargs.pop("resources")))
    both = sorted(set(grouped) & {k for k, v in declared.items() if v is not None})
    if both:
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: {', '.join(both)} given both as keyword and inside "
            "Environment(...)/Resources(...); give each once"
        )
    return {**grouped, **{k: v for k, v in declared.items() if v is not None}}


def validate_declaration(declared: Mapping[str, Any], target: str, dag: Any, task_id: str | None) -> None:
    """Everything that can be checked before the task runs, without network, Docker or registry."""
    # Many tasks of a DAG share one declaration: check each distinct one once per process.
    key = (repr(declared), repr(target), getattr(dag, "fileloc", None))
    if key in _VALID_DECLARATIONS:
        return
    _check_declaration(declared, target, dag, task_id)
    if len(_VALID_DECLARATIONS) < 10_000:
        _VALID_DECLARATIONS.add(key)


_VALID_DECLARATIONS: set[tuple] = set()


def _check_declaration(declared: Mapping[str, Any], target: str, dag: Any, task_id: str | None) -> None:
    dag_id = getattr(dag, "dag_id", None)
    environment, _ = build_models(dag_id, task_id, declared, skip_templated=True)
    if environment.python not in (None, WORKER_PYTHON):
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: python={environment.python!r}: tasks run on the workers' Python "
            f"{WORKER_PYTHON}, because the function is shipped as bytecode; remove `python`, "
            f"or run the Airflow workers on Python {environment.python}"
        )
    if not isinstance(target, str) or (target != "auto" and not TARGET_NAME.match(target)):
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: target={target!r}: use 'auto' (the routing rules decide) "
            "or the name of a target in infra.yaml (lowercase letters, digits, '-', '_')"
        )
    if environment.requirements and getattr(dag, "fileloc", None):
        path = requirements_file(dag.fileloc, environment.requirements)
        if not path.is_file():
            raise InfraSpecError(
                f"{where(dag_id, task_id)}: requirements={environment.requirements!r}: no such file "
                f"(looked for {path}; the path is relative to the DAG file)"
            )


def requirements_file(dag_file: str, declared: str) -> Path:
    path = Path(declared)
    return path if path.is_absolute() else Path(dag_file).parent / path
