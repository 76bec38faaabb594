"""What would run where: per task of a parsed DAG, the target, why, and the image or environment.

Used by `airflow-infra plan` and `build`. Works from the DAG as parsed: a templated
resource is not known yet, so routing uses the declared values and says what it left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_infra.config import InfraConfig, Route, route
from airflow_infra.errors import InfraError
from airflow_infra.operator import DECLARED_FIELDS, InfraOperator, requirements_file
from airflow_infra.spec import Environment, Resources, build_models, is_templated


@dataclass
class TaskPlan:
    dag_id: str
    task_id: str
    mapped: bool
    route: Route | None
    kind: str | None
    environment: Environment | None
    requirements_text: str | None
    # Templated declarations as written, e.g. {"memory": "{{ params.memory }}"}: decided at run time.
    templates: dict[str, str]
    error: str | None = None
    reference: str | None = None
    exists: bool | None = None
    # The declared resources known at parse time (templated ones are left out: see `templates`).
    resources: Resources | None = None

    @property
    def needs_image(self) -> bool:
        return self.kind not in (None, "local")

    @property
    def templated(self) -> list[str]:
        return list(self.templates)


def _declared(task: Any) -> tuple[dict[str, Any], str, bool] | None:
    if getattr(task, "is_mapped", False):  # a mapped task: its arguments wait in partial_kwargs
        operator_class = task.operator_class
        if not (isinstance(operator_class, type) and issubclass(operator_class, InfraOperator)):
            return None
        kwargs = task.partial_kwargs
        return {f: kwargs.get(f) for f in DECLARED_FIELDS}, kwargs.get("target", "auto"), True
    if isinstance(task, InfraOperator):
        return {f: getattr(task, f) for f in DECLARED_FIELDS}, task.target, False
    return None


def plan_dag(dag: Any, config: InfraConfig) -> list[TaskPlan]:
    plans = []
    for task in dag.tasks:
        found = _declared(task)
        if found is None:
            continue
        declared, target, mapped = found
        templates = {k: v for k, v in sorted(declared.items()) if is_templated(v)}
        plan = TaskPlan(dag.dag_id, task.task_id, mapped, None, None, None, None, templates)
        try:
            environment, resources = build_models(dag.dag_id, task.task_id, declared, skip_templated=True)
            plan.environment, plan.resources = environment, resources
            if environment.requirements:
                plan.requirements_text = requirements_file(dag.fileloc, environment.requirements).read_text()
            plan.route = route(config, resources, target, dag.dag_id, task.task_id)
            plan.kind = config.targets[plan.route.target].kind
        except (InfraError, OSError) as exc:
            plan.error = str(exc)
        plans.append(plan)
    return plans


def attach_images(plans: list[TaskPlan], config: InfraConfig, *, check: bool = True) -> None:
    """Fill in image references (and whether each exists, one lookup per distinct image)."""
    from airflow_infra.images.service import image_exists, plan_image

    known: dict[str, bool] = {}
    for plan in plans:
        if plan.environment is None:
            continue
        plan.reference = plan_image(plan.environment, plan.requirements_text, config).reference
        if check:
            if plan.reference not in known:
                try:
                    known[plan.reference] = image_exists(plan.reference, config)
                except Exception as exc:  # noqa: BLE001 - a registry or engine that can't answer
                    plan.error = f"cannot check {plan.reference}: {exc}"
                    continue
            plan.exists = known[plan.reference]


def load_dags(path: str) -> list[Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=path)
    if bag.import_errors:
        problems = "\n".join(f"{file}: {error.strip().splitlines()[-1]}" for file, error in bag.import_errors.items())
        raise InfraError(f"could not parse {path}:\n{problems}")
    return sorted(bag.dags.values(), key=lambda d: d.dag_id)

