"""`@infra_task` / `@task.infra`: the TaskFlow face of InfraOperator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attr
from airflow.sdk.bases.decorator import DecoratedOperator, _TaskDecorator
from airflow.sdk.definitions._internal.contextmanager import DagContext

from airflow_infra.errors import InfraSpecError, where
from airflow_infra.operator import InfraOperator
from airflow_infra.pipeline.escalation import check_on_oom
from airflow_infra.pipeline.fanout import FanOut
from airflow_infra.pipeline.declaration import check_connections, declaration_from, validate_declaration


class InfraDecoratedOperator(DecoratedOperator, InfraOperator):
    custom_operator_name = "@task.infra"
    template_fields = InfraOperator.template_fields
    template_fields_renderers = InfraOperator.template_fields_renderers

    def __init__(self, *, python_callable: Callable, op_args: Any = None, op_kwargs: Any = None, **kwargs: Any) -> None:
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            kwargs_to_upstream={"python_callable": python_callable, "op_args": op_args, "op_kwargs": op_kwargs},
            **kwargs,
        )


@attr.define(slots=False)
class _InfraTaskDecorator(_TaskDecorator):
    """A mapped task is not constructed at parse time, so validate its declaration here instead."""

    def _expand(self, expand_input: Any, *, strict: bool) -> Any:
        kwargs = dict(self.kwargs)
        dag = kwargs.get("dag") or DagContext.get_current()
        task_id = kwargs.get("task_id")
        declared = declaration_from(kwargs, getattr(dag, "dag_id", None), task_id)
        validate_declaration(declared, kwargs.get("target", "auto"), dag, task_id)
        check_connections(kwargs.get("connections"), getattr(dag, "dag_id", None), task_id)
        # The mapped operator gets the flat fields: Airflow would read a grouped
        # `resources=Resources(...)` as BaseOperator's own `resources`.
        flat = attr.evolve(self, kwargs={**kwargs, **declared})
        mapped = _TaskDecorator._expand(flat, expand_input, strict=strict)
        # Once mapped: the operator's retries include what the DAG's default_args give.
        operator = mapped.operator
        check_on_oom(operator.partial_kwargs.get("on_oom"), getattr(dag, "dag_id", None), task_id, operator.retries, declared.get("memory"))
        return mapped

    def fan_out(self, over: dict[str, Any] | None = None, *, chunk: int | None = None,
                 parallelism: int | None = None, max_failures: int | float = 0, **items: Any) -> Any:
        """Run the function once per item of one argument's (run-time) list, as this one task
        instance: `square.partial(k=2).fan_out(x=make_items(), chunk=50, max_failures=0.01)`.

        Each item runs with the task's declared resources, `parallelism` at a time (default: the
        target's), `chunk` items per process (default: a few chunks per worker). Up to
        `max_failures` failed items (a count, or a fraction of them below 1) are tolerated;
        their results are None. Downstream tasks receive the results as a lazy sequence. An
        argument named chunk, parallelism, max_failures or over goes in `over={...}`."""
        items = {**(over or {}), **items}
        kwargs = dict(self.kwargs)
        dag = kwargs.get("dag") or DagContext.get_current()
        dag_id, task_id = getattr(dag, "dag_id", None), kwargs.get("task_id") or self.function.__name__
        at = where(dag_id, task_id)
        if len(items) != 1:
            raise InfraSpecError(f"{at}: fan_out takes the one argument to fan out over, e.g. .fan_out(x=items); got {sorted(items) or 'none'}")
        fixed = dict(kwargs.pop("op_kwargs", None) or {})  # what .partial() fixed
        [(name, value)] = items.items()
        if name in fixed:
            raise InfraSpecError(f"{at}: fan_out over {name!r}, which .partial() already fixed")
        spec = {"argument": name, "chunk": chunk, "parallelism": parallelism, "max_failures": max_failures}
        # Before the operator binds the arguments to the function: its error would not say which task.
        FanOut.from_json(spec, dag_id, task_id, self.function)
        return attr.evolve(self, kwargs={**kwargs, "fan_out": spec})(**fixed, **{name: value})


def infra_task(python_callable: Callable | None = None, multiple_outputs: bool | None = None, **kwargs: Any):
    """Run the function in its own declared environment, on the target the routing rules pick.

    Takes InfraOperator's arguments (packages, requirements, apt_packages, python,
    base_image, env, cpu, memory, gpu, gpu_type, disk, shm, timeout, target, connections, on_oom, or the grouped
    environment=Environment(...) and resources=Resources(...)) and every BaseOperator one.
    """

    def decorate(function: Callable) -> _InfraTaskDecorator:
        return _InfraTaskDecorator(
            function=function,
            multiple_outputs=attr.NOTHING if multiple_outputs is None else multiple_outputs,
            operator_class=InfraDecoratedOperator,
            kwargs=kwargs,
            decorator_name="infra_task",
        )

    if python_callable is not None:
        if not callable(python_callable):
            raise TypeError("@infra_task takes keyword arguments only, e.g. @infra_task(packages=['pandas'])")
        return decorate(python_callable)
    return decorate
