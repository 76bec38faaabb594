"""The platform team's configuration: `$AIRFLOW_HOME/infra.yaml`, validated by pydantic.

With no file, every task runs on the built-in `local` target. Loaded at execute time
only (never while a DAG is parsed) and cached per process by the file's mtime.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from airflow_infra.errors import InfraConfigError
from airflow_infra.routing import LOCAL, Condition, RuleSyntaxError
from airflow_infra.spec import IMAGE_REF, TARGET_NAME
from airflow_infra.targets.contract import TargetConfig
from airflow_infra.targets.local import LocalTarget

# Stores the provider reads and writes through Airflow's ObjectStoragePath: a folder on the
# workers, S3 (whose client the images get too), GCS and Azure for the targets that run on
# the worker, and fsspec's in-process memory store (one `airflow dags test`: for tests). An
# Airflow connection goes in the URL as s3://CONN_ID@bucket/path.
ARTIFACT_SCHEMES = ("file", "s3", "gs", "abfs", "memory")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(?::([0-9]{1,5}))?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*\Z")


def check_registry(value: str | None) -> str | None:
    match = _REGISTRY.match(value) if value is not None else None
    if value is not None and (not match or int(match.group(1) or 0) > 65535):
        raise ValueError(f"{value!r} is not a registry such as '127.0.0.1:5000/ml' or 'ghcr.io/org'")
    return value


def check_url_template(value: str | None, *names: str) -> str | None:
    """A link template: an http(s) URL (the UI renders it as a link: no javascript: or data:)
    using only the named placeholders."""
    if value is not None and not re.match(r"https?://[^\s/]+", value):
        raise ValueError(f"{value!r} must be an http:// or https:// URL")
    return check_template(value, *names)


def check_template(value: str | None, *names: str) -> str | None:
    """A URL template may use only the named placeholders, as plain {name}: no attribute,
    index, conversion or format spec (checked when infra.yaml loads)."""
    if value is not None:
        import string

        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        for field, spec, conversion in fields:
            if field not in names or spec or conversion:
                raise ValueError(f"{value!r}: placeholders must be among {{{'}, {'.join(names)}}}, as written, got {{{field}}}")
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


class OomPolicy(BaseModel):
    """`oom:` in infra.yaml: escalation after an out-of-memory kill (pipeline.escalation).
    `on_oom` applies to every task that declares `memory` and none of its own; `max_memory`
    caps every escalation (without it: 4x the task's declared memory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_oom: Literal["double"] | None = None
    max_memory: int | None = None

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int | None:
        from airflow_infra.spec import QUANTITY_PARSERS

        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{str(value)[:40]!r} is not a memory quantity such as '64Gi'")
        return QUANTITY_PARSERS["memory"](value)


class AutosizeBounds(BaseModel):
    """One resource's bounds under `autosize:` (memory in bytes, cpu in cores once parsed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: float
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> AutosizeBounds:
        if not self.min <= self.default <= self.max:
            raise ValueError("needs min <= default <= max")
        return self


def _bounds(field: str, value: Any, fallback: AutosizeBounds) -> AutosizeBounds:
    """`autosize.<field>`'s quantities (any notation) as AutosizeBounds; a key left out keeps
    the field's default (`fallback`)."""
    from airflow_infra.spec import QUANTITY_PARSERS

    if isinstance(value, AutosizeBounds):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping such as {{default: ..., min: ..., max: ...}}, got {str(value)[:40]!r}")
    unknown = sorted(set(value) - {"default", "min", "max"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}: use default, min, max")
    parsed = {}
    for key in ("default", "min", "max"):
        raw = value.get(key, getattr(fallback, key))
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"{key}: {str(raw)[:40]!r} is not a quantity")
        try:
            parsed[key] = QUANTITY_PARSERS[field](raw)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return AutosizeBounds(**parsed)


class AutosizePolicy(BaseModel):
    """`autosize:` in infra.yaml: how `memory="auto"` / `cpu="auto"` are sized (pipeline.autosize).

    The request is the `percentile` of what the task's last `runs` successful runs used
    (peak memory; average cores), times `headroom`, within [min, max]; a task with no
    history yet gets its declared default ("auto:4Gi") or `default` here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory: AutosizeBounds = AutosizeBounds(default=2**30, min=64 * 2**20, max=64 * 2**30)
    cpu: AutosizeBounds = AutosizeBounds(default=1.0, min=0.1, max=16.0)
    percentile: float = Field(95, ge=50, le=100)
    headroom: float = Field(1.25, ge=1.0, le=4.0)
    runs: int = Field(5, ge=1, le=50)

    @field_validator("memory", "cpu", mode="before")
    @classmethod
    def _quantities(cls, value: Any, info: ValidationInfo) -> AutosizeBounds:
        return _bounds(info.field_name, value, cls.model_fields[info.field_name].default)


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
    # At most 16 MiB: XCom lives in the metadata database.
    xcom_max_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 2**20, strict=True)
    # name -> a target of a registered kind, validated by that kind's schema (airflow_infra.targets).
    targets: dict[str, TargetConfig] = {}
    rules: list[Rule] = []
    oom: OomPolicy = OomPolicy()
    autosize: AutosizePolicy = AutosizePolicy()

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        return check_registry(value)

    @field_validator("builder")
    @classmethod
    def _builder(cls, value: str) -> str:
        from airflow_infra.images.builders import builder_names

        if value not in builder_names():
            raise ValueError(f"{value!r} is not a builder; use one of {sorted(builder_names())} (or install its plug-in)")
        return value

    @field_validator("ca_certificates")
    @classmethod
    def _ca_files(cls, value: list[str]) -> list[str]:
        for file in value:
            if not Path(file).is_absolute() or not Path(file).is_file():
                raise ValueError(f"{file!r} is not an absolute path to a CA certificate file on this machine")
        return value

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if sep and "@" in rest.partition("/")[0] and ":" in rest.partition("/")[0].rpartition("@")[0]:
            raise ValueError("has a password in its URL: put the credentials in an Airflow connection and write s3://CONN_ID@bucket/path")
        if not (sep and scheme in ARTIFACT_SCHEMES and rest.strip("/") and "\n" not in value and "\0" not in value):
            raise ValueError(f"{value!r} is not a URL of a supported store: {', '.join(s + '://...' for s in ARTIFACT_SCHEMES)}")
        if scheme == "file" and not rest.startswith("/"):
            raise ValueError(f"{value!r}: a file:// store needs an absolute path (file:///srv/artifacts)")
        return value

    @field_validator("image_url")
    @classmethod
    def _image_url(cls, value: str | None) -> str | None:
        return check_url_template(value, "reference", "registry", "repository", "tag")

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
        catch_all = next((i for i, rule in enumerate(self.rules, 1) if rule.when is None), None)
        if catch_all is not None and catch_all < len(self.rules):
            raise ValueError(f"rule {catch_all} matches every task (no `when`), so the rules after it never match: make it the last")
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
    """`[infra] config_file` (a relative one is relative to AIRFLOW_HOME), else `$AIRFLOW_HOME/infra.yaml`."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("infra", "config_file", fallback="")
    return Path(AIRFLOW_HOME, configured) if configured else Path(AIRFLOW_HOME) / "infra.yaml"


def _is_configured() -> bool:
    from airflow.configuration import conf

    return bool(conf.get("infra", "config_file", fallback=""))


# path -> (the file's bytes, or None for no file, and the configuration made of them)
_cache: dict[Path, tuple[bytes | None, InfraConfig]] = {}


def load_config(path: Path | None = None) -> InfraConfig:
    """The configuration in `path` (default: config_path()), read again on every call and
    parsed again whenever its bytes change (any rewrite, whatever its mtime).

    No file at the default path means the built-in defaults (every task local); a file
    named by `[infra] config_file` must exist, and a file this process has loaded may not
    vanish: either is an error, never a silent fall-back to the defaults.
    """
    required = path is None and _is_configured()
    path = path or config_path()
    data = _read(path, required=required or (path in _cache and _cache[path][0] is not None))
    cached = _cache.get(path)
    if cached is not None and cached[0] == data:
        return cached[1]
    config = InfraConfig() if data is None else _parse(path, data)
    _cache[path] = (data, config)
    return config


def _read(path: Path, *, required: bool) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise InfraConfigError(f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist") from None
        if required:
            raise InfraConfigError(
                f"{path}: no such file (it is named by [infra] config_file, or was loaded before and has been "
                "deleted); restore it, or unset config_file to run every task on the local target"
            ) from None
        return None
    except IsADirectoryError:
        raise InfraConfigError(f"{path}: a directory, not a YAML file") from None
    except OSError as exc:
        raise InfraConfigError(f"{path}: cannot be read ({exc.strerror})") from None


def _parse(path: Path, data: bytes) -> InfraConfig:
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InfraConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        content = yaml.load(text, Loader=_strict_loader()) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InfraConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise InfraConfigError(f"{path}: the top level must be a mapping of settings, got {type(content).__name__}")
    try:
        return InfraConfig.model_validate(content)
    except ValidationError as exc:
        raise InfraConfigError(f"{path}: {validation_problems(exc)}") from None


@functools.cache
def _strict_loader() -> type:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last, silently)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def artifacts_url(config: InfraConfig) -> str:
    if config.artifacts:
        return config.artifacts
    from airflow.configuration import AIRFLOW_HOME

    return _default_artifacts_url(AIRFLOW_HOME)


@functools.lru_cache(maxsize=8)
def _default_artifacts_url(airflow_home: str) -> str:
    # Resolving walks the path's components (a system call each): once per home and process.
    return f"file://{Path(airflow_home).resolve()}/infra/artifacts"


def env_cache_dir() -> Path:
    """Where the local target keeps its virtual environments: `[infra] env_cache_dir`."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("infra", "env_cache_dir", fallback="")
    return Path(configured) if configured else Path(AIRFLOW_HOME) / "infra" / "envs"


def lock_dir() -> Path:
    """Where workers of this machine take turns (building one image): `$AIRFLOW_HOME/infra/locks`."""
    from airflow.configuration import AIRFLOW_HOME

    return Path(AIRFLOW_HOME) / "infra" / "locks"


def layer_cache_dir() -> Path:
    """Where the daemonless builder keeps finished layers: `[infra] layer_cache_dir`."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("infra", "layer_cache_dir", fallback="")
    return Path(configured) if configured else Path(AIRFLOW_HOME) / "infra" / "layers"
