"""The platform team's configuration: `$AIRFLOW_HOME/infra.yaml`, validated by pydantic.

With no file, every task runs on the built-in `local` target. Loaded at execute time
only (never while a DAG is parsed) and cached per process by the file's mtime.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_infra.errors import InfraConfigError
from airflow_infra.routing import LOCAL, Condition, RuleSyntaxError
from airflow_infra.spec import IMAGE_REF, TARGET_NAME
from airflow_infra.targets.contract import TargetConfig
from airflow_infra.targets.local import LocalTarget

_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


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
    # name -> a target of a registered kind, validated by that kind's schema (airflow_infra.targets).
    targets: dict[str, TargetConfig] = {}
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

    @field_validator("targets", mode="before")
    @classmethod
    def _by_kind(cls, targets: Any) -> dict[str, TargetConfig]:
        from airflow_infra.targets import get_kind

        if not isinstance(targets, dict):
            raise ValueError("must map target names to {kind: ..., ...}")
        out = {}
        for name, value in targets.items():
            if not isinstance(name, str) or not TARGET_NAME.match(name):
                raise ValueError(f"target name {name!r} must be lowercase letters, digits, '-' or '_'")
            if isinstance(value, TargetConfig):
                out[name] = value
                continue
            if not isinstance(value, dict) or "kind" not in value:
                raise ValueError(f"{name}: give the target's kind, e.g. {{kind: docker}}")
            try:
                schema = get_kind(value["kind"]).schema
                out[name] = schema.model_validate(value)
            except InfraConfigError as exc:
                raise ValueError(f"{name}.kind: {exc}") from None
            except ValidationError as exc:
                raise ValueError(f"{name}: {validation_problems(exc)}") from None
        return out

    @model_validator(mode="after")
    def _daemonless_needs_registry(self) -> InfraConfig:
        if self.builder == "daemonless" and not self.registry:
            raise ValueError("builder: daemonless pushes straight to a registry; set `registry` (e.g. 127.0.0.1:5000/ml)")
        return self

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


def validation_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


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
        raise InfraConfigError(f"{path}: {validation_problems(exc)}") from None
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


def layer_cache_dir() -> Path:
    """Where the daemonless builder keeps finished layers: `[infra] layer_cache_dir`."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("infra", "layer_cache_dir", fallback="")
    return Path(configured) if configured else Path(AIRFLOW_HOME) / "infra" / "layers"
