"""Plan a call: declaration -> resources -> route -> environment hash and, for kinds that
run images, the image reference.

`plan_call` is the one planner. The operator calls it at execute time on rendered values;
`airflow-infra plan/build` and the UI plugin call it (through `plan_dag`) on a parsed DAG,
where a templated resource is not known yet: routing then uses the declared values and
says what it left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_infra.errors import InfraError, InfraSpecError, where
from airflow_infra.pipeline.declaration import DECLARED_FIELDS, INFRA_TASK, requirements_file
from airflow_infra.routing import Route, route
from airflow_infra.spec import Environment, Resources, build_models, credential_lines, is_templated
from airflow_infra.targets import get_kind, runner_for

if TYPE_CHECKING:
    from airflow_infra.config import InfraConfig
    from airflow_infra.targets.contract import Runner, TargetConfig, TargetKind


@dataclass
class CallPlan:
    dag_id: str
    task_id: str
    environment: Environment
    resources: Resources
    route: Route
    kind: TargetKind
    target: TargetConfig
    requirements_path: Path | None = None
    requirements_text: str | None = None

    @property
    def needs_image(self) -> bool:
        return self.kind.needs_image

    @property
    def environment_hash(self) -> str:
        """Everything that decides what the code runs against: packages, requirements file
        content, Python, image inputs and runtime variables."""
        return self.environment.build_hash(self.requirements_text, {"env": self.environment.env})

    def image_reference(self, config: InfraConfig) -> str:
        """The image this call's environment runs in (computed, not looked up: no registry call)."""
        from airflow_infra.images.service import plan_image

        return plan_image(self.environment, self.requirements_text, config).reference

    def runner(self, config: InfraConfig) -> Runner:
        return runner_for(self.route.target, config)


def plan_call(
    declared: dict[str, Any],
    target_hint: str,
    config: InfraConfig,
    *,
    dag_id: str,
    task_id: str,
    dag_file: str | None,
    skip_templated: bool = False,
) -> CallPlan:
    environment, resources = build_models(dag_id, task_id, declared, skip_templated=skip_templated)
    chosen = route(config, resources, target_hint, dag_id, task_id)
    target = config.targets[chosen.target]
    req_path, req_text = _requirements(environment, dag_file, dag_id, task_id)
    return CallPlan(dag_id, task_id, environment, resources, chosen, get_kind(target.kind), target, req_path, req_text)


def _requirements(environment: Environment, dag_file: str | None, dag_id: str, task_id: str) -> tuple[Path | None, str | None]:
    if not environment.requirements or not dag_file:
        return None, None
    try:
        path = requirements_file(dag_file, environment.requirements)
        text = path.read_text()
    except InfraSpecError as exc:
        raise InfraSpecError(f"{where(dag_id, task_id)}: requirements={environment.requirements!r}: {exc}") from None
    except OSError as exc:
        raise InfraSpecError(f"{where(dag_id, task_id)}: requirements={environment.requirements!r}: cannot read {path}: {exc}") from None
    found = credential_lines(text)
    if found:  # the file goes into the image and its hash: a token there would be in every layer pulled
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: requirements={environment.requirements!r}: line {', '.join(map(str, found))} "
            "has credentials in a URL; give the index's credentials to the workers' pip/uv configuration "
            "(or a netrc file) instead"
        )
    return path, text


# -- whole DAGs, for the CLI and the plugin ------------------------------------------------


@dataclass
class TaskPlan:
    dag_id: str
    task_id: str
    mapped: bool
    # Templated declarations as written, e.g. {"memory": "{{ params.memory }}"}: decided at run time.
    templates: dict[str, str] = field(default_factory=dict)
    call: CallPlan | None = None
    error: str | None = None
    reference: str | None = None
    exists: bool | None = None  # None: not asked

    @property
    def needs_image(self) -> bool:
        return self.call is not None and self.call.needs_image

    @property
    def templated(self) -> list[str]:
        return list(self.templates)


def _declared(task: Any) -> tuple[dict[str, Any], str, bool] | None:
    """An infra task's declaration, target and whether it is mapped; None for other tasks.
    Infra operators are recognised by their INFRA_TASK mark, so this module needs no operator."""
    if getattr(task, "is_mapped", False):  # a mapped task: its arguments wait in partial_kwargs
        if not getattr(task.operator_class, INFRA_TASK, False):
            return None
        kwargs = task.partial_kwargs
        return {f: kwargs.get(f) for f in DECLARED_FIELDS}, kwargs.get("target", "auto"), True
    if getattr(type(task), INFRA_TASK, False):
        return {f: getattr(task, f) for f in DECLARED_FIELDS}, task.target, False
    return None


@dataclass(frozen=True)
class TaskDeclaration:
    """What a parsed DAG says of one infra task: all planning needs, and nothing of the DAG's code."""

    task_id: str
    declared: dict[str, Any]
    target: str
    mapped: bool


def declarations(dag: Any) -> list[TaskDeclaration]:
    """The DAG's infra tasks' declarations, in task order."""
    found = []
    for task in dag.tasks:
        declared = _declared(task)
        if declared is not None:
            found.append(TaskDeclaration(task.task_id, *declared))
    return found


def plan_dag(dag: Any, config: InfraConfig) -> list[TaskPlan]:
    return plan_declarations(dag.dag_id, dag.fileloc, declarations(dag), config)


def plan_declarations(dag_id: str, dag_file: str | None, tasks: list[TaskDeclaration], config: InfraConfig) -> list[TaskPlan]:
    plans = []
    for task in tasks:
        templates = {k: v for k, v in sorted(task.declared.items()) if is_templated(v)}
        plan = TaskPlan(dag_id, task.task_id, task.mapped, templates)
        try:
            plan.call = plan_call(
                task.declared, task.target, config, dag_id=dag_id, task_id=task.task_id, dag_file=dag_file, skip_templated=True
            )
            plan.reference = plan.call.image_reference(config)
        except (InfraError, OSError) as exc:
            plan.error = str(exc)
        plans.append(plan)
    return plans


def check_images(plans: list[TaskPlan], config: InfraConfig) -> None:
    """Ask whether each image exists (one lookup per distinct image), only for tasks whose
    target runs images: a DAG that runs on local targets needs no Docker engine or registry."""
    from airflow_infra.images.service import image_exists

    known: dict[str, bool] = {}
    for plan in plans:
        if not plan.needs_image or plan.reference is None:
            continue
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
