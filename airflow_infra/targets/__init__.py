"""Target kinds: where a call can run. Each kind is one folder (its infra.yaml schema and
`KIND` in `__init__.py`, its runner, its extra links) and one registration.

Built-in kinds are listed below; a third-party kind registers the same thing, a
`TargetKind` at `module:attribute`, under the entry point group `airflow_infra.targets`:

    [options.entry_points]
    airflow_infra.targets =
        slurm = my_package.slurm:KIND

Entry points are read once, and only when a kind that is not built in is asked for.
"""

from __future__ import annotations

import functools
from importlib import import_module

from typing import TYPE_CHECKING

from airflow_infra.errors import InfraConfigError
from airflow_infra.targets.contract import TargetKind

if TYPE_CHECKING:
    from airflow_infra.config import InfraConfig
    from airflow_infra.targets.contract import Runner

ENTRY_POINT_GROUP = "airflow_infra.targets"
BUILTIN = {
    "local": "airflow_infra.targets.local:KIND",
    "docker": "airflow_infra.targets.docker:KIND",
    "kubernetes": "airflow_infra.targets.kubernetes:KIND",
    "batch": "airflow_infra.targets.batch:KIND",
}


@functools.cache
def _plugins() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {e.name: e.value for e in entry_points(group=ENTRY_POINT_GROUP) if e.name not in BUILTIN}


@functools.cache
def _load(path: str) -> object:
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)


def get_kind(name: object) -> TargetKind:
    path = BUILTIN.get(name) if isinstance(name, str) else None
    if path is None and isinstance(name, str):
        path = _plugins().get(name)
    if path is None:
        raise InfraConfigError(f"unknown target kind {name!r}; known kinds: {', '.join(kind_names())}")
    try:
        kind = _load(path)
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is a configuration problem
        raise InfraConfigError(f"target kind {name!r} ({path}) cannot be loaded: {exc}") from None
    if not isinstance(kind, TargetKind) or kind.name != name:
        raise InfraConfigError(f"target kind {name!r} ({path}) is not a TargetKind named {name!r}")
    return kind


def runner_for(target_name: str, config: InfraConfig) -> Runner:
    """A fresh runner for one call on the named target of infra.yaml."""
    target = config.targets[target_name]
    return get_kind(target.kind).load_runner()(target_name, target, config)


def builtin_links() -> list:
    """The extra links of the built-in kinds, for InfraOperator (whose links Airflow fixes
    when a DAG is parsed, so entry-point kinds' links cannot join them)."""
    return [_load(path)() for name in BUILTIN for path in get_kind(name).links]


def kind_names() -> list[str]:
    return sorted({*BUILTIN, *_plugins()})


__all__ = ["ENTRY_POINT_GROUP", "TargetKind", "get_kind", "kind_names", "runner_for"]
