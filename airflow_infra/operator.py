"""InfraOperator: run a Python callable in its declared environment, on the target the rules choose.

`@infra_task` builds this operator (through InfraDecoratedOperator). The classic form is
for what decorated tasks cannot do, such as mapping over resources:

    InfraOperator.partial(task_id="fit", python_callable=fit).expand(memory=["1Gi", "8Gi"])
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_infra.errors import InfraSpecError, InfraTaskFailed, where
from airflow_infra.links import INFRA_LINKS
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
# Context values a function may ask for by parameter name, beyond Airflow's own keys.
EXTRA_CONTEXT = ("map_index",)


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


def to_plain(value: Any) -> Any:
    """A context value as plain Python (pendulum -> datetime, ParamsDict -> dict), or TypeError."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for scalar in (bool, str, int, float):  # subclasses (pendulum aside) become the builtin
        if isinstance(value, scalar) and not isinstance(value, dt.date):
            return scalar(value)
    if isinstance(value, dt.datetime):
        return dt.datetime.fromtimestamp(value.timestamp(), tz=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.date(value.year, value.month, value.day)
    if isinstance(value, Mapping):
        return {str(k): to_plain(value[k]) for k in value}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def materialize(value: Any) -> Any:
    """Turn lazy XCom sequences (what a task downstream of a mapped task gets) into lists."""
    if isinstance(value, (str, bytes, bytearray)):
        return value
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(v) for v in value)
    if isinstance(value, Sequence):
        # One slice is one request for the whole sequence; iterating would fetch item by item
        # and probe one past the end.
        return [materialize(v) for v in value[:]]
    return value


_SCALARS: dict[Any, Callable[[str], Any]] = {
    float: float,
    int: int,
    bool: lambda text: {"true": True, "false": False, "1": True, "0": False}[text.strip().lower()],
}
_SCALARS.update({t.__name__: f for t, f in list(_SCALARS.items())})  # string annotations (PEP 563)


def coerce_rendered(fn: Callable, args: list, kwargs: dict, where_: str) -> tuple[list, dict]:
    """Convert rendered template strings to the parameter's annotated int, float or bool.

    Jinja renders `lr="{{ params.lr }}"` to the string '0.1'; a function annotated
    `lr: float` means a float, as it would in a plain call.
    """
    import inspect

    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except TypeError:
        return args, kwargs
    params = inspect.signature(fn).parameters
    for name, value in list(bound.arguments.items()):
        convert = _SCALARS.get(params[name].annotation)
        if convert is None or not isinstance(value, str):
            continue
        try:
            bound.arguments[name] = convert(value)
        except (ValueError, KeyError):
            raise InfraSpecError(
                f"{where_}: argument {name}={value!r} does not convert to its annotation {params[name].annotation}"
            ) from None
    return list(bound.args), dict(bound.kwargs)


class InfraOperator(BaseOperator):
    """Run `python_callable` in an environment built from its declaration, on a routed target.

    :param python_callable: the function; it runs where Airflow is not installed.
    :param op_args: positional arguments (templated).
    :param op_kwargs: keyword arguments (templated).
    :param packages: PEP 508 requirements, e.g. ``["pandas==2.2.*"]``.
    :param requirements: a requirements file, relative to the DAG file.
    :param apt_packages: Debian packages (images only).
    :param python: Python major.minor; must be the workers' version.
    :param base_image: the image to build on (images only).
    :param env: environment variables for the function (templated).
    :param cpu: cores, e.g. 2, 0.5 or "500m" (templated).
    :param memory: e.g. "4Gi" or bytes (templated); likewise disk and shm.
    :param gpu: GPU count (templated); gpu_type: e.g. "a100" (templated).
    :param timeout: seconds, "2h" or a timedelta (templated).
    :param target: "auto" (the routing rules decide) or a target name.
    :param cache: True or a version string: reuse an earlier result when the code, the
        inputs and the environment all match (off by default).
    """

    template_fields: Sequence[str] = ("op_args", "op_kwargs", *RESOURCE_FIELDS, "env")
    template_fields_renderers = {"op_args": "py", "op_kwargs": "py", "env": "json"}
    shallow_copy_attrs: Sequence[str] = ("python_callable",)
    ui_color = "#cfe8dc"
    # Image, Kubernetes pod, Batch job: each shows when the target that ran the task records it.
    operator_extra_links = INFRA_LINKS
    packages = requirements = apt_packages = python = base_image = env = None
    cpu = memory = gpu = gpu_type = disk = shm = timeout = None

    def __init__(
        self,
        *,
        python_callable: Callable,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        packages: Collection[str] | None = None,
        requirements: str | None = None,
        apt_packages: Collection[str] | None = None,
        python: str | None = None,
        base_image: str | None = None,
        env: Mapping[str, str] | None = None,
        cpu: float | str | None = None,
        memory: int | str | None = None,
        gpu: int | str | None = None,
        gpu_type: str | None = None,
        disk: int | str | None = None,
        shm: int | str | None = None,
        timeout: float | str | dt.timedelta | None = None,
        environment: Environment | None = None,
        target: str = "auto",
        cache: bool | str = False,
        **kwargs: Any,
    ) -> None:
        # Named one by one (not **kwargs) so that classic .partial().expand() can map them.
        explicit = {
            "packages": packages, "requirements": requirements, "apt_packages": apt_packages, "python": python,
            "base_image": base_image, "env": env, "cpu": cpu, "memory": memory, "gpu": gpu, "gpu_type": gpu_type,
            "disk": disk, "shm": shm, "timeout": timeout, "environment": environment,
        }
        if environment is None and not isinstance(kwargs.get("resources"), Resources):
            declared = {k: v for k, v in explicit.items() if v is not None}  # the common, fast path
        else:
            declared = declaration_from({**explicit, "resources": kwargs.pop("resources", None)}, None, kwargs.get("task_id"))
        super().__init__(**kwargs)
        if not callable(python_callable):
            raise InfraSpecError(f"{where(self.dag_id, self.task_id)}: python_callable must be callable")
        self.python_callable = python_callable
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        self.target = target
        self.cache = cache
        # Undeclared fields keep the class default, None. Written to __dict__ directly: during
        # __init__, BaseOperator.__setattr__ would only record init kwargs, which hold these already.
        self.__dict__.update(declared)
        self._backend = None
        validate_declaration(declared, target, self.dag if self.has_dag() else None, self.task_id)
        if not (isinstance(cache, bool) or (isinstance(cache, str) and 0 < len(cache) <= 128)):
            raise InfraSpecError(
                f"{where(self.dag_id, self.task_id)}: cache={cache!r}: use True, False or a version string "
                "(changing the string invalidates earlier results)"
            )

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Upstream results are resolved here: keep artifact references as references (the
        # call loads them where it runs), even under InfraXComBackend.
        from airflow_infra.xcom import keep_references

        with keep_references():
            super().render_template_fields(context, jinja_env)

    def _set_xcomargs_dependencies(self) -> None:
        # BaseOperator scans every template field for XComArgs at construction; most of our
        # ten are undeclared (None) or scalars, and skipping those keeps parse time near plain @task's.
        from airflow.sdk.definitions.xcom_arg import XComArg

        for name in self.template_fields:
            value = getattr(self, name, None)
            if value is not None and not isinstance(value, (str, int, float)):
                XComArg.apply_upstream_relationship(self, value)

    # -- execute ---------------------------------------------------------------------------

    def _declared(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DECLARED_FIELDS}

    def _call_arguments(self, context: Any) -> tuple[list, dict]:
        import inspect

        from airflow.sdk.bases.decorator import KeywordParameters
        from airflow.sdk.definitions.context import Context, context_merge

        user_keys = set(self.op_kwargs)
        context_merge(context, self.op_kwargs)
        wanted = KeywordParameters.determine(self.python_callable, self.op_args, context).unpacking()
        params = inspect.signature(self.python_callable).parameters
        kwargs: dict[str, Any] = {}
        for key, value in wanted.items():
            if key in user_keys:
                kwargs[key] = materialize(value)
                continue
            try:
                kwargs[key] = to_plain(value)
            except TypeError as exc:
                if key in params:  # asked for by name: say why it cannot be had
                    raise InfraSpecError(
                        f"{where(self.dag_id, self.task_id)}: the function asks for context {key!r} ({exc}), "
                        "which cannot travel to where it runs; ask for plain values such as params, run_id, "
                        "ds, logical_date, try_number or map_index"
                    ) from None
        for key in EXTRA_CONTEXT:
            if key in params and key not in user_keys:
                kwargs[key] = context["ti"].map_index
        for key, param in params.items():
            # A run triggered without a logical date has no logical_date, ds, data_interval_*...:
            # a function that names one gets None rather than a TypeError about its signature.
            # (The user's own arguments were merged into the context above.)
            if key in Context.__annotations__ and key not in context and param.default is inspect.Parameter.empty:
                kwargs[key] = None
        args = [materialize(a) for a in self.op_args]
        return coerce_rendered(self.python_callable, args, kwargs, where(self.dag_id, self.task_id))

    def _code_roots(self) -> list[str]:
        from airflow.configuration import conf

        roots = [conf.get("core", "dags_folder", fallback="")]
        if self.has_dag() and self.dag.fileloc:
            roots.append(os.path.dirname(self.dag.fileloc))
        return roots

    def execute(self, context: Any) -> Any:
        from airflow_infra.artifacts import CALL_FILE, CALL_META_FILE, ArtifactStore, find_refs
        from airflow_infra.backends import Job, backend_for
        from airflow_infra.codeship import code_fingerprint, dumps_call, local_modules
        from airflow_infra.config import artifacts_url, load_config, route

        environment, resources = build_models(self.dag_id, self.task_id, self._declared(), skip_templated=False)
        config = load_config()
        chosen = route(config, resources, self.target, self.dag_id, self.task_id)
        self.log.info("target %r: %s", chosen.target, chosen.reason)

        from airflow_infra.xcom import keep_references

        with keep_references():  # a reduce task's lazy sequence is fetched here
            args, kwargs = self._call_arguments(context)
        ti = context["ti"]
        store = ArtifactStore(artifacts_url(config))
        task_dir = store.task_dir(self.dag_id, context["run_id"], self.task_id, ti.map_index, ti.try_number)
        req_path, req_text = self._requirements(environment)
        modules = local_modules(self.python_callable, self._code_roots())  # the DAG's own code, shipped by value
        blob = dumps_call(
            self.python_callable,
            args,
            kwargs,
            modules=modules,
            multiple_outputs=self.multiple_outputs,
            xcom_max_bytes=config.xcom_max_bytes,
        )
        meta = {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": context["run_id"],
            "map_index": ti.map_index,
            "try_number": ti.try_number,
            "function": f"{self.python_callable.__module__}.{self.python_callable.__qualname__}",
            "code_fingerprint": code_fingerprint(self.python_callable, modules),
            "target": chosen.target,
            "routing_reason": chosen.reason,
            "environment": environment.model_dump(mode="json"),
            # Everything that decides what the code runs against: packages, requirements file
            # content, Python, image inputs and runtime variables.
            "environment_hash": environment.build_hash(req_text, {"env": environment.env}),
            "resources": resources.model_dump(mode="json"),
            "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        store.write_bytes(task_dir / CALL_FILE, blob)
        key = self._cache_key(meta, args, kwargs)
        if key is not None:
            hit = self._cache_hit(store, task_dir, meta, key)
            if hit is not None:
                return self._results(store, task_dir, hit, meta["resources"])
        store.write_json(task_dir / CALL_META_FILE, meta)

        self._backend = backend_for(chosen.target, config.targets[chosen.target], config)
        job = Job(
            dag_id=self.dag_id,
            task_id=self.task_id,
            environment=environment,
            resources=resources,
            store=store,
            task_dir=task_dir,
            refs=find_refs([args, kwargs]),
            log=self.log,
            requirements_path=req_path,
            requirements_text=req_text,
            context=context,
        )
        self._backend.run(job)  # a deferrable backend may defer here; execute_complete resumes
        return self._finish(store, job.task_dir, meta)  # a backend that reattached may have moved it

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resume after a backend deferred (e.g. a Batch job in deferrable mode)."""
        from airflow_infra.artifacts import CALL_META_FILE, ArtifactStore
        from airflow_infra.backends import Job, backend_for
        from airflow_infra.config import artifacts_url, load_config

        config = load_config()
        store = ArtifactStore(artifacts_url(config))
        ti = context["ti"]
        task_dir = store.task_dir(self.dag_id, context["run_id"], self.task_id, ti.map_index, ti.try_number, fresh=False)
        meta = store.read_json(task_dir / CALL_META_FILE)
        backend = backend_for(meta["target"], config.targets[meta["target"]], config)
        job = Job(
            dag_id=self.dag_id,
            task_id=self.task_id,
            environment=Environment(**meta["environment"]),
            resources=Resources(**meta["resources"]),
            store=store,
            task_dir=task_dir,
            refs=[],
            log=self.log,
            context=context,
        )
        backend.resume(job, event)
        return self._finish(store, job.task_dir, meta)

    def _finish(self, store: Any, task_dir: Any, meta: dict[str, Any]) -> Any:
        """Read the outcome the call left in the store; record it in the cache if asked to."""
        from airflow_infra.artifacts import OUTCOME_FILE

        outcome_path = task_dir / OUTCOME_FILE
        if not store.exists(outcome_path):
            raise InfraTaskFailed(f"{where(self.dag_id, self.task_id)}: the task finished without writing {outcome_path}")
        result = self._results(store, task_dir, store.read_json(outcome_path), meta["resources"])
        key = meta.get("cache", {}).get("key")
        if key is not None:
            from airflow_infra.cache import record

            record(store, key, task_dir, meta)
        return result

    def _cache_key(self, meta: dict[str, Any], args: list, kwargs: dict) -> str | None:
        if self.cache is False:
            return None
        from airflow_infra.cache import cache_key

        return cache_key(
            fingerprint=meta["code_fingerprint"],
            args=args,
            kwargs=kwargs,
            environment_hash=meta["environment_hash"],
            version="" if self.cache is True else str(self.cache),
            multiple_outputs=bool(self.multiple_outputs),
        )

    def _cache_hit(self, store: Any, task_dir: Any, meta: dict[str, Any], key: str) -> dict[str, Any] | None:
        """On a hit, record this call as served from the cache and return its outcome."""
        from airflow_infra.artifacts import CALL_META_FILE, OUTCOME_FILE
        from airflow_infra.cache import lookup

        hit = lookup(store, key)
        meta["cache"] = {"key": key, "hit": hit is not None}
        if hit is None:
            self.log.info("cache miss (key %s): running", key[:12])
            return None
        source = {k: hit[k] for k in ("dag_id", "task_id", "run_id", "map_index", "task_dir")}
        self.log.info(
            "cache hit: reusing the result of run %r (DAG %r, task %r, map index %s) from %s",
            source["run_id"], source["dag_id"], source["task_id"], source["map_index"], source["task_dir"],
        )
        meta["cache"]["from"] = source
        store.write_json(task_dir / CALL_META_FILE, meta)
        outcome = {**hit["outcome"], "cache_hit": source}
        store.write_json(task_dir / OUTCOME_FILE, outcome)
        return outcome

    def _requirements(self, environment: Environment) -> tuple[Path | None, str | None]:
        if not environment.requirements:
            return None, None
        path = requirements_file(self.dag.fileloc, environment.requirements)
        try:
            return path, path.read_text()
        except OSError as exc:
            raise InfraSpecError(
                f"{where(self.dag_id, self.task_id)}: requirements={environment.requirements!r}: cannot read {path}: {exc}"
            ) from None

    def _results(self, store: Any, task_dir: Any, outcome: dict[str, Any], requested: dict[str, Any]) -> Any:
        from airflow_infra.artifacts import make_ref
        from airflow_infra.codeship import loads_plain
        from airflow_infra.quantities import format_bytes
        from airflow_infra.rightsizing import advice, summary

        metrics = outcome.get("metrics", {})
        served = " (when it ran, in the run served from the cache)" if outcome.get("cache_hit") else ""
        self.log.info("measured%s: %s", served, summary(requested, metrics))
        for hint in advice(requested, metrics):
            self.log.warning("right-sizing: %s", hint)
        if not outcome.get("ok"):
            error = outcome.get("error", {})
            stage = "could not load its call" if error.get("stage") == "load" else "raised"
            raise InfraTaskFailed(
                f"{where(self.dag_id, self.task_id)}: the function {stage} {error.get('type')}: {error.get('message')}\n"
                f"{error.get('traceback', '')}"
            )
        values = {}
        for output in outcome["outputs"]:
            path = store.output_path(task_dir, output)
            if output["plain"]:
                values[output["key"]] = loads_plain(store.read_bytes(path))
            else:
                values[output["key"]] = make_ref(store.uri(path), output["type"], output["bytes"], output.get("sha256"))
                self.log.info("output %r (%s, %s) stays in the store: %s", output["key"], output["type"], format_bytes(output["bytes"]), store.uri(path))
        return values if self.multiple_outputs else values["return_value"]

    def on_kill(self) -> None:
        if self._backend is not None:
            self._backend.kill()
