"""A task's declaration: the declared fields out of operator arguments, checked at parse time
(no network, Docker or registry: only what the declaration and the DAG folder tell)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_infra.errors import InfraSpecError, where
from airflow_infra.spec import (
    ENVIRONMENT_FIELDS,
    RESOURCE_FIELDS,
    APT_NAME,
    QUANTITY_PARSERS,
    TARGET_NAME,
    WORKER_PYTHON,
    Environment,
    Resources,
    build_models,
    flatten,
    is_templated,
    is_valid_requirement,
)

DECLARED_FIELDS = (*ENVIRONMENT_FIELDS, *RESOURCE_FIELDS)
# The class attribute that marks an operator as an infra task (planners look for it).
INFRA_TASK = "is_infra_task"


def declaration_from(kwargs: dict[str, Any], dag_id: str | None, task_id: str | None) -> dict[str, Any]:
    """Pop the declared fields (and the grouped Environment/Resources forms) out of operator kwargs."""
    declared = {name: kwargs.pop(name) for name in DECLARED_FIELDS if name in kwargs}
    grouped = {}
    if kwargs.get("environment") is not None and not isinstance(kwargs["environment"], Environment):
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: environment={type(kwargs['environment']).__name__}: give "
            "Environment(...) from airflow_infra, or the fields themselves as keywords (packages=..., env=...)"
        )
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
    # Checked value by value, each distinct value once per process: a DAG's tasks share most
    # of their values even when each declares something of its own (a memory, one package),
    # and checking a whole declaration again for one new value was most of what a task
    # declared differently cost at parse time. Equivalent to checking the whole declaration:
    # the one check of two fields together (shm within memory) sends a declaration with both
    # to _check_declaration, as does anything the fast path does not accept (and so every
    # error, reported in full, every field at once).
    if declared.get("shm") is not None and declared.get("memory") is not None:
        _check_declaration(declared, target, dag, task_id)
        return
    if target != "auto" and not (type(target) is str and target in _VALID_TARGETS):
        _check_declaration(declared, target, dag, task_id)  # raises if the target (or anything) is wrong
        _remember(_VALID_TARGETS, target)
    for name, value in declared.items():
        known = _VALID.get(name)
        if known is None or value is None:  # not a declared field, or not declared
            continue
        if type(value) is str:
            if value in known:
                continue
            parse = QUANTITY_PARSERS.get(name)
            if parse is not None and "{{" not in value and "{%" not in value:
                # A new quantity (a memory of each task's own is the common case), checked
                # here as _field_ok would: at parse time each function call this loop makes
                # starts cold, and the calls cost more than the check.
                try:
                    parse(value)
                except Exception:  # noqa: BLE001 - _check_declaration reports it
                    _check_declaration(declared, target, dag, task_id)  # raises, saying what is wrong
                if len(known) < _MEMO_LIMIT:
                    known.add(value)
                continue
        elif name in _PER_ITEM and type(value) in (list, tuple):
            # Packages one by one: a list differs from the next task's by one pin.
            for item in value:
                if type(item) is str and item in known:
                    continue
                if not (is_valid_requirement(item) if name == "packages" else _item_ok(name, item)):
                    _check_declaration(declared, target, dag, task_id)  # raises, saying what is wrong
                    break
                if len(known) < _MEMO_LIMIT:
                    known.add(item)
            continue
        else:
            try:
                if (type(value), value) in known:  # the type too: True == 1 and 2 == 2.0 validate apart
                    continue
            except TypeError:  # unhashable (a mapping of env variables): checked every time
                pass
        if not _field_ok(name, value, dag):
            _check_declaration(declared, target, dag, task_id)  # raises, saying what is wrong
        elif name != "requirements":  # a requirements file is looked at every time: it may have gone since
            try:
                _remember(known, value if type(value) is str else (type(value), value))
            except TypeError:
                pass


# Values found valid in this process, per field: strings as they are, other values as
# (type, value), the items of a list field one by one.
_VALID: dict[str, set] = {name: set() for name in (*ENVIRONMENT_FIELDS, *RESOURCE_FIELDS)}
_VALID_TARGETS: set[str] = set()
_FIELD_KINDS = {**dict.fromkeys(ENVIRONMENT_FIELDS, Environment), **dict.fromkeys(RESOURCE_FIELDS, Resources)}
# The list fields whose validators check each item alone (Environment._packages, ._apt).
_PER_ITEM = ("packages", "apt_packages")


_MEMO_LIMIT = 10_000  # values per field: a DAG file declaring more checks the rest each time


def _remember(memo: set, key: Any) -> None:
    if len(memo) < _MEMO_LIMIT:
        memo.add(key)


def _item_ok(name: str, item: Any) -> bool:
    """Whether one item of a list field passes the check its validator makes of each item
    (the same function, or the same pattern)."""
    if name == "apt_packages":
        return type(item) is str and APT_NAME.match(item) is not None
    return is_valid_requirement(item)


def _field_ok(name: str, value: Any, dag: Any) -> bool:
    """Whether one declared value passes what _check_declaration checks of it: its model
    validating it alone, as build_models(skip_templated=True) would, and the checks after."""
    try:
        parse = QUANTITY_PARSERS.get(name)
        if parse is not None:  # the quantities first: a new memory per task is the common case
            if not is_templated(value):  # else decided once rendered
                parse(value)  # all the model would do with it (a quarter of the model's cost)
            return True
        if _FIELD_KINDS[name] is Resources:
            if not is_templated(value):
                Resources(**{name: value})
            return True
        if name == "env" and isinstance(value, Mapping) and any(is_templated(v) for v in value.values()):
            value = {k: ("" if is_templated(v) else v) for k, v in value.items()}
        environment = Environment(**{name: value})
    except Exception:  # noqa: BLE001 - _check_declaration reports it
        return False
    if name == "python":
        return environment.python in (None, WORKER_PYTHON)
    fileloc = getattr(dag, "fileloc", None)
    if name == "requirements" and fileloc:
        try:
            return requirements_file(fileloc, environment.requirements).is_file()
        except InfraSpecError:
            return False
    return True


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
        try:
            path = requirements_file(dag.fileloc, environment.requirements)
        except InfraSpecError as exc:
            raise InfraSpecError(f"{where(dag_id, task_id)}: requirements={environment.requirements!r}: {exc}") from None
        if not path.is_file():
            raise InfraSpecError(
                f"{where(dag_id, task_id)}: requirements={environment.requirements!r}: no such file "
                f"(looked for {path}; the path is relative to the DAG file)"
            )


def requirements_file(dag_file: str, declared: str) -> Path:
    """The requirements file a DAG file declares, relative to it. It must lie in the DAG
    file's folder (or below) or in the DAGs folder: a DAG author names files they ship with
    their DAGs, not the worker's (/etc/..., another team's folder through '..' or a symlink)."""
    folder = Path(dag_file).parent
    path = (folder / declared).resolve()
    roots = [folder.resolve(), _dags_folder()]
    if not any(root is not None and path.is_relative_to(root) for root in roots):
        raise InfraSpecError(f"{path} is outside the DAG file's folder and the DAGs folder; keep requirements files with the DAGs")
    return path


def _dags_folder() -> Path | None:
    from airflow.configuration import conf

    configured = conf.get("core", "dags_folder", fallback="")
    return Path(configured).resolve() if configured else None


# A connection id: what Airflow's own ids look like in practice (letters, digits, '_', '.',
# '-'), at most 250 characters as in Airflow's table. Stricter than Airflow allows (it also
# takes ':', '/', '#', ...), so an id can never carry shell, path or YAML syntax anywhere
# it is named (a later kind's Secret or Secrets Manager name).
CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}\Z")
MAX_CONNECTIONS = 32


def check_connections(value: object, dag_id: str | None, task_id: str | None) -> list[str] | None:
    """The declared `connections` as a list of ids, or an InfraSpecError naming DAG, task and
    field. Names only: each connection is looked up when the task runs, never at parse time."""
    if value is None:
        return None
    prefix = f"{where(dag_id, task_id)}: connections="
    if type(value) not in (list, tuple):
        raise InfraSpecError(
            f"{prefix}{type(value).__name__}: give a list of Airflow connection ids, e.g. connections=['warehouse']"
        )
    if len(value) > MAX_CONNECTIONS:
        raise InfraSpecError(f"{prefix}[...] declares {len(value)} connections; at most {MAX_CONNECTIONS}")
    seen: set[str] = set()
    for item in value:
        if type(item) is not str:
            raise InfraSpecError(f"{prefix}[...]: an item is a {type(item).__name__}; each must be a connection id (a str)")
        if not CONN_ID.match(item):
            shown = repr(item[:60]) + ("..." if len(item) > 60 else "")
            raise InfraSpecError(
                f"{prefix}[...]: {shown} is not a connection id: 1 to 250 of letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'"
            )
        if item in seen:
            raise InfraSpecError(f"{prefix}[...]: {item!r} is declared twice; name each connection once")
        seen.add(item)
    return list(value)
