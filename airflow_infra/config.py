"""The platform team's configuration: `$AIRFLOW_HOME/infra.yaml`, validated by pydantic.

With no file, every task runs on the built-in `local` target. Loaded at execute time
only (never while a DAG is parsed) and cached per process by the file's mtime.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_infra.errors import InfraConfigError, where
from airflow_infra.routing import Condition, RuleSyntaxError, describe
from airflow_infra.spec import IMAGE_REF, TARGET_NAME, Resources

FORCE_TARGET_ENV = "AIRFLOW_INFRA_TARGET"
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
LOCAL = "local"


def check_registry(value: str | None) -> str | None:
    if value is not None and not _REGISTRY.match(value):
        raise ValueError(f"{value!r} is not a registry such as '127.0.0.1:5000/ml' or 'ghcr.io/org'")
    return value


def check_template(value: str | None, *names: str) -> str | None:
    """A URL template may use only the named placeholders (checked when infra.yaml loads)."""
    if value is not None:
        try:
            value.format(**dict.fromkeys(names, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r}: placeholders must be among {{{'}, {'.join(names)}}} ({exc})") from None
    return value


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalTarget(_Target):
    """A subprocess on the worker, in a cached virtual environment built with uv."""

    kind: Literal["local"] = "local"


class DockerTarget(_Target):
    """The task's built image on the worker's Docker engine."""

    kind: Literal["docker"]


class GpuPlacement(_Target):
    """Where pods asking for one `gpu_type` may run: merged into the pod's selector and tolerations."""

    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []


# Pods run as a non-root user unless the target says otherwise (runtime.py needs no root).
DEFAULT_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}


class KubernetesTarget(_Target):
    """A pod per call, through the cncf-kubernetes provider's KubernetesPodOperator."""

    kind: Literal["kubernetes"]
    namespace: str = "default"
    kubernetes_conn_id: str = "kubernetes_default"
    service_account: str | None = None
    image_pull_secrets: list[str] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    # gpu_type -> placement, e.g. {a100: {node_selector: {gpu: a100}, tolerations: [...]}}.
    # When set, a task asking for a gpu_type not listed here fails before any pod is made.
    gpu_types: dict[str, GpuPlacement] = {}
    gpu_resource: str = "nvidia.com/gpu"
    # Limits policy: "request" sets the limit equal to the request, "none" sets no limit.
    memory_limit: Literal["request", "none"] = "request"
    cpu_limit: Literal["request", "none"] = "none"
    # A pod template (YAML file on the worker) the provider's pod is merged onto.
    pod_template_file: str | None = None
    # The pod's securityContext; `{}` lets pods run as the image's user (root).
    security_context: dict[str, Any] = DEFAULT_POD_SECURITY
    # The registry address as the cluster's nodes see it, when it differs from `registry`
    # (e.g. a pull-through mirror); pods pull the same repository and tag from there.
    pull_registry: str | None = None
    # Wait for the pod in the triggerer instead of holding a worker slot.
    deferrable: bool = False
    startup_timeout: int = Field(default=120, gt=0)
    # The Kubernetes pod link of a task instance, e.g.
    # "https://dashboard.example/#/pod/{namespace}/{name}?namespace={namespace}".
    dashboard_url: str | None = None
    # Hand the artifact store connection's keys to the pod as environment variables. Only for
    # local test set-ups (moto); real pods get credentials from their service account.
    pass_credentials: bool = False

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise ValueError(f"{value!r} is not a Kubernetes namespace name (lowercase letters, digits, '-')")
        return value

    @field_validator("dashboard_url")
    @classmethod
    def _dashboard_url(cls, value: str | None) -> str | None:
        return check_template(value, "namespace", "name")

    @field_validator("pull_registry")
    @classmethod
    def _pull_registry(cls, value: str | None) -> str | None:
        return check_registry(value)


class BatchTarget(_Target):
    """AWS Batch through the amazon provider's BatchOperator: one job definition per image."""

    kind: Literal["batch"]
    job_queue: str
    aws_conn_id: str = "aws_default"
    region: str | None = None
    job_role_arn: str | None = None
    execution_role_arn: str | None = None
    platform: Literal["EC2", "FARGATE"] = "EC2"
    # Passed to SubmitJob as is, e.g. {attempts: 3, evaluateOnExit: [{onStatusReason: "Host EC2*", action: RETRY}]}
    retry_strategy: dict[str, Any] | None = None
    tags: dict[str, str] = {}
    # Seconds between status polls (the hook's default is a random 1-10 s).
    poll_interval: float | None = Field(default=None, gt=0)
    # Wait for the job in the triggerer instead of holding a worker slot.
    deferrable: bool = False
    # Hand the connection's keys to the job as environment variables. Only for local test
    # set-ups (moto); real jobs get credentials from job_role_arn.
    pass_credentials: bool = False


Target = Annotated[LocalTarget | DockerTarget | KubernetesTarget | BatchTarget, Field(discriminator="kind")]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    when: str | None = None
    target: str

    @field_validator("when")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Condition.compile(value)
            except RuleSyntaxError as exc:
                raise ValueError(f"{value!r}: {exc}") from None
        return value

    @property
    def condition(self) -> Condition | None:
        return None if self.when is None else Condition.compile(self.when)


class InfraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where built images go, e.g. 127.0.0.1:5000/ml or <account>.dkr.ecr.<region>.amazonaws.com/ml.
    # None: images stay in the local Docker engine (enough for the docker target).
    registry: str | None = None
    registry_conn_id: str | None = None
    builder: str = "docker"
    # The image every environment builds on: Debian + Python 3 of the workers' major.minor
    # (dev/base-image.sh makes one without Docker Hub).
    base_image: str = "airflow-infra/base:bookworm"
    # Extra CA certificates (PEM files on the worker) trusted inside builds: for package
    # downloads behind a TLS-intercepting proxy.
    ca_certificates: list[str] = []
    artifacts: str | None = None
    # The Image link of a task instance, e.g. "https://registry.example/ui/{repository}:{tag}";
    # placeholders {reference} {registry} {repository} {tag}. Default: ECR's console for ECR,
    # else the registry's manifest URL.
    image_url: str | None = None
    # Results whose pickle is at most this many bytes, and made of plain Python values, also
    # go to XCom as values; anything else goes as a reference into the artifact store.
    xcom_max_bytes: int = Field(default=64 * 1024, ge=0)
    targets: dict[str, Target] = {}
    rules: list[Rule] = []

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        return check_registry(value)

    @field_validator("image_url")
    @classmethod
    def _image_url(cls, value: str | None) -> str | None:
        return check_template(value, "reference", "registry", "repository", "tag")

    @field_validator("base_image")
    @classmethod
    def _base(cls, value: str) -> str:
        if not IMAGE_REF.match(value):
            raise ValueError(f"{value!r} is not an image reference")
        return value

    @field_validator("targets")
    @classmethod
    def _names(cls, targets: dict[str, Any]) -> dict[str, Any]:
        for name in targets:
            if not TARGET_NAME.match(name):
                raise ValueError(f"target name {name!r} must be lowercase letters, digits, '-' or '_'")
        return targets

    @model_validator(mode="after")
    def _builtin_local_and_rule_targets(self) -> InfraConfig:
        if LOCAL not in self.targets:
            object.__setattr__(self, "targets", {**self.targets, LOCAL: LocalTarget()})
        elif not isinstance(self.targets[LOCAL], LocalTarget):
            raise ValueError("the name 'local' is reserved for a target of kind local")
        for i, rule in enumerate(self.rules, 1):
            if rule.target not in self.targets:
                raise ValueError(f"rule {i} sends tasks to {rule.target!r}, which is not among targets: {sorted(self.targets)}")
        return self


def config_path() -> Path:
    """`[infra] config_file`, else `$AIRFLOW_HOME/infra.yaml`."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("infra", "config_file", fallback="")
    return Path(configured) if configured else Path(AIRFLOW_HOME) / "infra.yaml"


_cache: dict[Path, tuple[float, InfraConfig]] = {}


def load_config(path: Path | None = None) -> InfraConfig:
    path = path or config_path()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return InfraConfig()
    cached = _cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
        config = InfraConfig.model_validate(data)
    except yaml.YAMLError as exc:
        raise InfraConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise InfraConfigError(f"{path}: {problems}") from None
    _cache[path] = (mtime, config)
    return config


def artifacts_url(config: InfraConfig) -> str:
    if config.artifacts:
        return config.artifacts
    from airflow.configuration import AIRFLOW_HOME

    return f"file://{Path(AIRFLOW_HOME).resolve()}/infra/artifacts"


def env_cache_dir() -> Path:
    """Where the local target keeps its virtual environments: `[infra] env_cache_dir`."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("infra", "env_cache_dir", fallback="")
    return Path(configured) if configured else Path(AIRFLOW_HOME) / "infra" / "envs"


@dataclass(frozen=True)
class Route:
    target: str
    reason: str


def route(config: InfraConfig, resources: Resources, hint: str, dag_id: str, task_id: str) -> Route:
    """Choose the target: the forcing variable, then the task's pin, then the first matching rule."""
    forced = os.environ.get(FORCE_TARGET_ENV)
    if forced:
        if forced not in config.targets:
            raise InfraConfigError(
                f"{FORCE_TARGET_ENV}={forced!r} names no target; known targets: {sorted(config.targets)}"
            )
        return Route(forced, f"{FORCE_TARGET_ENV} forces every task to {forced!r}")
    if hint != "auto":
        if hint not in config.targets:
            raise InfraConfigError(
                f"{where(dag_id, task_id)}: target={hint!r} is not among the configured targets {sorted(config.targets)}"
            )
        return Route(hint, f"the task pins target={hint!r}")
    if not config.rules:
        return Route(LOCAL, "no routing rules are configured: the built-in local target runs everything")
    for i, rule in enumerate(config.rules, 1):
        condition = rule.condition
        if condition is None:
            return Route(rule.target, f"rule {i} (catch-all) matched")
        if condition.matches(resources):
            return Route(rule.target, f"rule {i} {condition.text!r} matched ({describe(resources)})")
    raise InfraConfigError(
        f"{where(dag_id, task_id)}: no routing rule matched ({describe(resources)}); "
        "add a catch-all rule such as '- {target: k8s}' at the end of rules"
    )
