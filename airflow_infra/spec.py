"""What a task declares: its environment and its resources, as pydantic models.

Both models normalise on construction (package names canonicalised and sorted, quantities
turned into numbers), so two spellings of the same declaration compare and hash equal.
Everything here is pure and cheap: it runs at DAG parse time for every task.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from airflow_infra.errors import InfraSpecError, where
from airflow_infra.quantities import format_bytes, format_cpu, parse_bytes, parse_cpu, parse_seconds

WORKER_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+)?\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_PYTHON = re.compile(r"^3\.([0-9]{1,2})(?:\.[0-9]+)?\Z")
# An OCI image reference: [host[:port]/]path[:tag][@digest], lowercase path components.
IMAGE_REF = re.compile(
    # The first component is a host only if it has a '.' or a port, or is localhost (Docker's rule).
    r"^(?:(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+|localhost)/)?"
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?\Z"
)
_GPU_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
TARGET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")


# The everyday subset of PEP 508, "name[extras] op version, op version", with valid
# versions only ('==2.2.*' yes, '==banana' and '~=1' no): canonicalised without packaging's
# full parser, which costs several times more at DAG parse time. Anything else goes to it.
_V = r"v?[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?(?:\+[a-z0-9.]+)?"
_V_DOTTED = r"v?[0-9]+(?:\.[0-9]+)+(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?(?:\+[a-z0-9.]+)?"
_END = r"(?![A-Za-z0-9.*+!_-])"  # the version is the specifier's whole token
_SPEC = rf"(?:===\s*[A-Za-z0-9.*+!_-]+|(?:==|!=)\s*{_V}(?:\.\*)?{_END}|(?:<=|>=|<|>)\s*{_V}{_END}|~=\s*{_V_DOTTED}{_END})"
_SIMPLE_REQUIREMENT = re.compile(
    rf"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[\s*([A-Za-z0-9._,\s-]*)\s*\])?\s*"
    rf"({_SPEC}(?:\s*,\s*{_SPEC})*)?\s*\Z",
    re.I,
)
_SPECIFIER = re.compile(r"(~=|===|==|!=|<=|>=|<|>)\s*([A-Za-z0-9.*+!_-]+)")
# The commonest pins ("pandas==2.2.*", "numpy<2", "scikit-learn>=1.3"): a strict subset of
# _SIMPLE_REQUIREMENT (no spaces, extras, suffixes or second specifier) that matches in a
# third of its time; at DAG parse time each task may declare a pin of its own.
_PLAIN_PIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:(?:==|!=)[0-9]+(?:\.[0-9]+)*(?:\.\*)?|(?:<=|>=|<|>)[0-9]+(?:\.[0-9]+)*)?\Z"
)


# Compiled here, not given to re.sub as a string, which looks the pattern up in re's cache
# on every call (a cache that everything a DAG file runs shares and can evict).
_NAME_SEPARATORS = re.compile(r"[-_.]+")


def _canonical_name(name: str) -> str:
    if "-" not in name and "_" not in name and "." not in name:  # most names: no separators to fold
        return name.lower()
    return _NAME_SEPARATORS.sub("-", name).lower()


def canonical_requirement(text: str) -> str:
    """One spelling per PEP 508 requirement: 'NumPy <2' and 'numpy<2' both give 'numpy<2'."""
    if type(text) is not str or "\n" in text or "\r" in text or "\0" in text:  # checked before the cache, which cannot hash a list
        raise ValueError(f"{text!r} is not a PEP 508 requirement such as 'pandas==2.2.*' or 'numpy<2' (a string)")
    return _canonical_requirement(text)


def is_valid_requirement(text: Any) -> bool:
    """Whether canonical_requirement(text) succeeds. Parse time needs no more: where the
    everyday form matches (the same grammar) the canonical spelling is not built, which
    halves a new pin's cost there; the function runs in another process anyway."""
    if type(text) is str and (_PLAIN_PIN.match(text) or ("\n" not in text and "\r" not in text and _SIMPLE_REQUIREMENT.match(text))):
        return True
    try:
        canonical_requirement(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)  # DAGs repeat the same pins across many tasks
def _canonical_requirement(text: str) -> str:
    simple = _SIMPLE_REQUIREMENT.match(text)
    if not simple:
        return _canonical_requirement_full(text)
    name, extras, specs = simple.groups()
    out = _canonical_name(name)
    extra_names = [e.strip() for e in extras.split(",") if e.strip()] if extras else []
    if extra_names:
        out += "[" + ",".join(sorted(_canonical_name(e) for e in extra_names)) + "]"
    if not specs:
        return out
    # Sorted like packaging's SpecifierSet renders them.
    return out + ",".join(sorted(op + version for op, version in _SPECIFIER.findall(specs)))


def _canonical_requirement_full(text: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not isinstance(text, str) or not text.strip() or text.lstrip().startswith("-"):
        raise ValueError(f"{text!r} is not a PEP 508 requirement such as 'pandas==2.2.*' or 'numpy<2'")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"{text!r} is not a PEP 508 requirement such as 'pandas==2.2.*' or 'numpy<2' ({exc})") from None
    out = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    if req.url:
        if "@" in req.url.partition("://")[2].partition("/")[0]:  # user:token@host
            raise ValueError(
                f"{_without_credentials(text)!r} has credentials in its URL, which would be stored with the "
                "image and the call's record: give the index's credentials to the workers' pip/uv configuration "
                "(or a netrc file) instead"
            )
        out += f" @ {req.url}"
    else:
        out += str(req.specifier)  # SpecifierSet renders its clauses sorted
    if req.marker:
        out += f"; {req.marker}"
    return out


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"expected a list of strings, got {type(value).__name__}")
    return list(value)


_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]*@")


def _without_credentials(text: str) -> str:
    """`text` with the user:password of every URL in it replaced by '***'."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def credential_lines(text: str) -> list[int]:
    """The numbers of the lines of `text` that hold a URL with a user or password in it."""
    return [n for n, line in enumerate(text.splitlines(), 1) if _URL_CREDENTIALS.search(line)]


def _hash(data: Mapping[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Environment(BaseModel):
    """Where a task's code runs: Python version, packages and environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packages: tuple[str, ...] = ()
    requirements: str | None = None
    apt_packages: tuple[str, ...] = ()
    python: str | None = None
    base_image: str | None = None
    env: dict[str, str] = {}

    @field_validator("packages", mode="before")
    @classmethod
    def _packages(cls, value: Any) -> tuple[str, ...]:
        return tuple(sorted({canonical_requirement(p) for p in _as_list(value)}))

    @field_validator("apt_packages", mode="before")
    @classmethod
    def _apt(cls, value: Any) -> tuple[str, ...]:
        names = _as_list(value)
        for name in names:
            if not isinstance(name, str) or not APT_NAME.match(name):
                raise ValueError(f"{name!r} is not a Debian package name such as 'libgomp1' or 'curl=7.88.1-10'")
        return tuple(sorted(set(names)))

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\0" in value or "\n" in value):
            raise ValueError(f"{value!r} is not a path to a requirements file (relative to the DAG file)")
        return value

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> str | None:
        if value is None:
            return None
        match = _PYTHON.match(value) if isinstance(value, str) else None
        if not match:  # a number is refused too: 3.10 would be 3.1
            raise ValueError(f"{value!r} is not a Python version such as '3.11'")
        return f"3.{match.group(1)}"

    @field_validator("base_image")
    @classmethod
    def _base_image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_REF.match(value):
            raise ValueError(f"{value!r} is not an image reference such as 'python:3.11-slim' or 'registry:5000/ml/base:1'")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping of variable names to strings, got {type(value).__name__}")
        out = {}
        for key, val in value.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '_')")
            if type(val) not in (str, int, float, bool) or "\0" in str(val):
                raise ValueError(f"the value of {key} must be a string (or a number or bool), got {type(val).__name__}")
            out[key] = str(val)
        return out

    @property
    def python_version(self) -> str:
        return self.python or WORKER_PYTHON

    def content_hash(self) -> str:
        """Hash of the whole declaration, environment variables included."""
        return _hash(self.model_dump(mode="json"))

    def build_hash(self, requirements_text: str | None = None, extra: Mapping[str, Any] | None = None) -> str:
        """Hash of what determines a built environment (not the runtime variables).

        `requirements_text` is the requirements file's content: the file, not its path, decides.
        `extra` carries builder inputs (runtime version, build options).
        """
        data = self.model_dump(mode="json", exclude={"env", "requirements"})
        data["python"] = self.python_version
        data["requirements"] = requirements_text
        data["extra"] = dict(extra or {})
        return _hash(data)


def _cores(value: Any) -> float:
    return parse_cpu(value) / 1000


def _bounded(parse: Any, low: float, high: float, show: Any) -> Any:
    """`parse`, refusing what lies outside [low, high]: beyond those a value is a typo or an
    attack (a 1-byte memory limit; memory=0, which Docker reads as no limit; 10**30 cores)."""

    def check(value: Any) -> Any:
        try:
            number = parse(value)
        except OverflowError:
            raise ValueError(f"{value!r} is too large: use at most {show(high)}") from None
        if not low <= number <= high:
            raise ValueError(f"{value!r} is out of range: use from {show(low)} to {show(high)}")
        return number

    return check


GPU_MAX = 64
# What Resources' validators do to a declared (non-None) quantity: each returns a value of
# the field's type, or raises. Parse time checks a new value with the function alone,
# which is what the model runs on it (pipeline.declaration).
QUANTITY_PARSERS: dict[str, Any] = {
    "cpu": _bounded(_cores, 0.001, 1024, lambda cores: format_cpu(round(cores * 1000))),
    "memory": _bounded(parse_bytes, 6 * 2**20, 2**50, format_bytes),  # Docker refuses less than 6 MiB
    "disk": _bounded(parse_bytes, 2**20, 2**50, format_bytes),
    "shm": _bounded(parse_bytes, 2**20, 2**50, format_bytes),
    "timeout": _bounded(parse_seconds, 1, 366 * 86400, lambda seconds: f"{seconds:g}s"),
}


class Resources(BaseModel):
    """What a task needs to run. Quantities are stored normalised: cores, bytes, seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = None
    memory: int | None = None
    gpu: int = 0
    gpu_type: str | None = None
    disk: int | None = None
    shm: int | None = None
    timeout: float | None = None

    @field_validator("cpu", "memory", "disk", "shm", "timeout", mode="before")
    @classmethod
    def _quantity(cls, value: Any, info: ValidationInfo) -> Any:
        return None if value is None else QUANTITY_PARSERS[info.field_name](value)

    @model_validator(mode="after")
    def _shm_within_memory(self) -> Resources:
        if self.shm is not None and self.memory is not None and self.shm > self.memory:
            raise ValueError(
                f"shm={format_bytes(self.shm)} is more than memory={format_bytes(self.memory)}: "
                "shared memory counts against the memory limit"
            )
        return self

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, str) and re.match(r"[0-9]{1,3}\Z", value.strip(" ")):
            count = int(value)
        elif type(value) is int:
            count = value
        else:
            count = -1
        if isinstance(value, bool) or not 0 <= count <= GPU_MAX:
            raise ValueError(f"expected a whole number of GPUs (0, 1, 2, ... up to {GPU_MAX}), got {value!r}")
        return count

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, value: str | None) -> str | None:
        if value is not None and not _GPU_TYPE.match(value):
            raise ValueError(f"{value!r} is not a GPU type name such as 'a100' or 'nvidia-l4'")
        return value


    def content_hash(self) -> str:
        return _hash(self.model_dump(mode="json"))


ENVIRONMENT_FIELDS = tuple(Environment.model_fields)
RESOURCE_FIELDS = tuple(Resources.model_fields)


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def spec_error(dag_id: str | None, task_id: str | None, error: ValidationError, values: Mapping[str, Any]) -> InfraSpecError:
    """Turn pydantic's report into one message naming the DAG, the task and each bad field."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check of several fields together names them itself
            lines.append(message)
            continue
        field = str(item["loc"][0])
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        shown = values.get(field, item.get("input"))
        if field == "env" and isinstance(shown, Mapping):  # values may be credentials: names only
            shown = {key: "..." for key in shown}
        lines.append(f"{field}={_without_credentials(repr(shown))}: {message}")
    return InfraSpecError(f"{where(dag_id, task_id)}: invalid declaration: " + "; ".join(lines))


# An automatic request (pipeline.autosize): "auto", or "auto:<first-run default>" such as
# "auto:4Gi". Only cpu and memory; the operator replaces it with a number before planning.
AUTO_FIELDS = ("cpu", "memory")
_AUTO = re.compile(r"auto(?::([0-9A-Za-z.]{1,24}))?\Z")


def auto_request(name: str, value: Any) -> tuple[bool, str | None]:
    """Whether `value` of field `name` asks for an automatic request, and its declared
    first-run default (None: infra.yaml's `autosize` default)."""
    if name not in AUTO_FIELDS or type(value) is not str:
        return False, None
    match = _AUTO.match(value)
    return (True, match.group(1)) if match else (False, None)


def build_models(
    dag_id: str | None, task_id: str | None, values: Mapping[str, Any], *, skip_templated: bool
) -> tuple[Environment, Resources]:
    """Validate declared keyword values into (Environment, Resources).

    With `skip_templated` (parse time) a templated resource value is left out: it can only
    be checked once rendered, at execute time, which calls this again without the flag.
    Likewise an automatic request: it stands for its declared first-run default, or is left
    out (its size comes from the task's history at run time, pipeline.autosize).
    """
    env_values = {k: values[k] for k in ENVIRONMENT_FIELDS if values.get(k) is not None}
    res_values = {
        k: values[k]
        for k in RESOURCE_FIELDS
        if values.get(k) is not None and not (skip_templated and is_templated(values[k]))
    }
    for name in AUTO_FIELDS:
        is_auto, default = auto_request(name, res_values.get(name))
        if is_auto and skip_templated:
            if default is None:
                del res_values[name]
            else:
                res_values[name] = default
    env = env_values.get("env")
    if skip_templated and isinstance(env, Mapping) and any(is_templated(v) for v in env.values()):
        env_values["env"] = {k: ("" if is_templated(v) else v) for k, v in env_values["env"].items()}
    try:
        return Environment(**env_values), Resources(**res_values)
    except ValidationError as exc:
        raise spec_error(dag_id, task_id, exc, values) from None


def flatten(environment: Environment | None, resources: Resources | None) -> dict[str, Any]:
    """The keyword form of the grouped models (what `@infra_task(environment=..., resources=...)` means)."""
    out: dict[str, Any] = {}
    if environment is not None:
        out.update({k: v for k, v in environment.model_dump().items() if v not in (None, (), {})})
    if resources is not None:
        out.update({k: v for k, v in resources.model_dump().items() if v is not None and not (k == "gpu" and v == 0)})
    return out
