"""InfraOperator: run a Python callable in its declared environment, on the target the rules choose.

`@infra_task` builds this operator (through InfraDecoratedOperator). The classic form is
for what decorated tasks cannot do, such as mapping over resources:

    InfraOperator.partial(task_id="fit", python_callable=fit).expand(memory=["1Gi", "8Gi"])

The operator only adapts Airflow (template fields, context, XCom, deferral, on_kill) to
the call pipeline in airflow_infra.pipeline, which does the work.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.definitions.mappedoperator import OperatorPartial

from airflow_infra.errors import InfraSpecError, InfraTaskFailed, where
from airflow_infra.links import ImageLink, RecordedLinks
from airflow_infra.pipeline.escalation import advise_on_oom, check_on_oom
from airflow_infra.pipeline.fanout import check_fan_out
from airflow_infra.pipeline.declaration import DECLARED_FIELDS, check_connections, declaration_from, validate_declaration
from airflow_infra.spec import RESOURCE_FIELDS, Environment, Resources
from airflow_infra.targets import builtin_links


# _take_over's answer when the earlier try's call left nothing to use or follow.
_RUN_AFRESH = object()
FAN_OUT_PROGRESS_SECONDS = 10  # how often a fan-out's task log says how far along it is


def _release(runner: Any, call: Any, handle: Any) -> None:
    """What an ended call of a dead worker's still holds (a container, a pod, a secret): kill
    and collect do it, both safe on a call that has ended."""
    try:
        runner.kill(handle)
    finally:
        runner.collect(call, handle)


class _InfraPartial(OperatorPartial):
    """InfraOperator.partial(...): `connections` cannot be mapped. Which credentials a task
    gets is fixed in the DAG file (`.partial(connections=[...])`), never chosen per index."""

    def expand(self, **mapped_kwargs: Any) -> Any:
        if "connections" in mapped_kwargs:
            self._refuse_mapped_connections(".expand(connections=...)")
        return super().expand(**mapped_kwargs)

    def expand_kwargs(self, kwargs: Any, *, strict: bool = True) -> Any:
        # A literal list is checked now; a list an upstream task returns cannot be seen at
        # parse time (README, "Connections in tasks").
        if isinstance(kwargs, Sequence) and any(isinstance(item, Mapping) and "connections" in item for item in kwargs):
            self._refuse_mapped_connections(".expand_kwargs([{'connections': ...}])")
        return super().expand_kwargs(kwargs, strict=strict)

    def _refuse_mapped_connections(self, how: str) -> None:
        self._expand_called = True  # the error is the message, not a "never mapped" warning
        dag = self.kwargs.get("dag")
        raise InfraSpecError(
            f"{where(getattr(dag, 'dag_id', None), self.kwargs.get('task_id'))}: connections: {how} is not "
            "allowed: which credentials a task gets is fixed in the DAG file; declare them in "
            ".partial(connections=[...])"
        )


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
    :param connections: Airflow connection ids the function reads through
        airflow_infra.task_connections.connection(id); looked up when the task runs,
        delivered by the target without entering any file, spec or log. Not templated: which
        credentials a task gets is fixed in the DAG file, not chosen by upstream data.
    :param cache: True or a version string: reuse an earlier result when the code, the
        inputs and the environment all match (off by default).
    :param on_oom: None or "double": after an out-of-memory kill, Airflow's next try asks for
        double the memory the killed try ran with, up to infra.yaml's oom.max_memory (else 4x
        the declared memory), and is routed again. Needs `memory` and retries >= 1. Not templated.
    :param fan_out: run the function once per item of one argument's run-time list, as this
        one task (pipeline.fanout): {"argument": name, "chunk": items per chunk,
        "parallelism": chunks at once, "max_failures": a count or a fraction}. The
        decorator's `.fan_out(x=items, ...)` sets it. Not templated.
    :param templates_dict, templates_exts, show_return_value_in_logs: as for @task.
    """

    template_fields: Sequence[str] = ("templates_dict", "op_args", "op_kwargs", *RESOURCE_FIELDS, "env")
    template_fields_renderers = {"templates_dict": "json", "op_args": "py", "op_kwargs": "py", "env": "json"}
    shallow_copy_attrs: Sequence[str] = ("python_callable",)
    ui_color = "#cfe8dc"
    is_infra_task = True  # pipeline.declaration.INFRA_TASK: how planners recognise infra tasks
    # Image, and each built-in kind's (Kubernetes pod, Batch job): each shows when the target
    # that ran the task records it.
    operator_extra_links = (ImageLink(), *builtin_links())
    packages = requirements = apt_packages = python = base_image = env = None
    cpu = memory = gpu = gpu_type = disk = shm = timeout = None
    connections: list[str] | None = None
    on_oom: str | None = None
    fan_out: dict[str, Any] | None = None
    _execution = None  # the running call's Execution, while execute() or execute_complete() drives it

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
        connections: Collection[str] | None = None,
        cache: bool | str = False,
        on_oom: str | None = None,
        fan_out: dict[str, Any] | None = None,
        templates_dict: dict[str, Any] | None = None,
        templates_exts: Sequence[str] | None = None,
        show_return_value_in_logs: bool = True,
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
        # Written to __dict__ at once, not attribute by attribute: during __init__,
        # BaseOperator.__setattr__ only looks for a `_convert_<name>` method (none exists for
        # these) and records init kwargs (which hold these already), and at ~1 us a call it was
        # a tenth of what an infra task costs over a plain @task at parse time. Undeclared
        # fields keep the class default, None. templates_dict and show_return_value_in_logs
        # are as PythonOperator (and so @task) takes them.
        self.__dict__.update(
            declared,
            python_callable=python_callable,
            op_args=list(op_args or []),
            op_kwargs=dict(op_kwargs or {}),
            target=target,
            connections=check_connections(connections, self.dag_id, self.task_id),
            cache=cache,
            on_oom=on_oom,
            fan_out=check_fan_out(fan_out, python_callable, declared, cache, on_oom, self.dag_id, self.task_id),
            templates_dict=templates_dict,
            show_return_value_in_logs=show_return_value_in_logs,
        )
        if templates_exts:
            self.template_ext = templates_exts
        validate_declaration(declared, target, self.dag if self.has_dag() else None, self.task_id)
        check_on_oom(on_oom, self.dag_id, self.task_id, self.retries, declared.get("memory"))
        if not (isinstance(cache, bool) or (isinstance(cache, str) and 0 < len(cache) <= 128)):
            raise InfraSpecError(
                f"{where(self.dag_id, self.task_id)}: cache={cache!r}: use True, False or a version string "
                "(changing the string invalidates earlier results)"
            )

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """BaseOperator.partial, with the declaration checked now, as the decorator's mapped
        form does: a mapped task is not constructed while the DAG file is parsed."""
        from airflow.sdk.definitions._internal.contextmanager import DagContext

        dag = kwargs.get("dag") or DagContext.get_current()
        task_id = kwargs.get("task_id")
        declared = declaration_from(kwargs, getattr(dag, "dag_id", None), task_id)  # pops the grouped forms
        validate_declaration(declared, kwargs.get("target", "auto"), dag, task_id)
        check_connections(kwargs.get("connections"), getattr(dag, "dag_id", None), task_id)
        # BaseOperator.partial is a descriptor that refuses instances; its class method bound to this class.
        partial = vars(BaseOperator)["partial"].class_method.__get__(cls, cls)(**kwargs, **declared)
        partial._expand_called = True  # replaced by the copy below, which warns if never mapped
        # After BaseOperator.partial: it merges the DAG's default_args, which may set retries.
        check_on_oom(kwargs.get("on_oom"), getattr(dag, "dag_id", None), task_id, partial.kwargs.get("retries"), declared.get("memory"))
        return _InfraPartial(operator_class=partial.operator_class, kwargs=partial.kwargs, params=partial.params)

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

    # -- execute: the call pipeline ---------------------------------------------------------

    def _declared(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DECLARED_FIELDS}

    @property
    def _dag_file(self) -> str | None:
        return self.dag.fileloc if self.has_dag() else None

    def execute(self, context: Any) -> Any:
        from airflow_infra.config import load_config
        from airflow_infra.pipeline import cache, durable
        from airflow_infra.pipeline.arguments import call_arguments
        from airflow_infra.pipeline.execute import Execution
        from airflow_infra.pipeline.package import package_call, store_for, write_meta
        from airflow_infra.pipeline.plan import plan_call
        from airflow_infra.xcom import keep_references

        config = load_config()
        ti = context["ti"]
        earlier = durable.recall(
            context, store_for(config), self.dag_id, context["run_id"], self.task_id, ti.map_index, self.log
        )
        if earlier is not None:
            taken_over = self._take_over(config, context, earlier)
            if taken_over is not _RUN_AFRESH:
                return taken_over
        declared, sized = self._autosized(config, context["run_id"])
        declared, policy, escalated = self._escalation(config, context, declared)
        plan = plan_call(declared, self.target, config, dag_id=self.dag_id, task_id=self.task_id, dag_file=self._dag_file)
        self.log.info("target %r: %s", plan.route.target, plan.route.reason)
        if escalated is not None:
            self._log_escalation(escalated, policy, {**declared, "memory": policy.declared}, plan, config)
        connections = self._connections(plan)  # before anything is written or submitted
        with keep_references():  # a reduce task's lazy sequence is fetched here
            args, kwargs = call_arguments(
                self.python_callable, self.op_args, self.op_kwargs, context, where(self.dag_id, self.task_id),
                self.templates_dict,
            )
        store = store_for(config)
        folder = store.task_dir(self.dag_id, context["run_id"], self.task_id, ti.map_index, ti.try_number)
        fanned = None
        if self.fan_out is not None:
            fanned, plan, args, kwargs = self._prepare_fan_out(config, plan, store, folder, args, kwargs)
            if fanned["run"] is None:  # every item has a good result from an earlier try
                return self._conclude_fan_out(store, folder, fanned)
        packaged = package_call(
            plan, self.python_callable, args, kwargs, store=store, config=config, run_id=context["run_id"],
            map_index=ti.map_index, try_number=ti.try_number, multiple_outputs=bool(self.multiple_outputs),
            dag_file=self._dag_file, log=self.log, context=context, connections=connections, folder=folder,
            fan_out=fanned and fanned["run"],
        )
        call, meta = packaged.call, packaged.meta
        if fanned:
            meta["fan_out"] = {k: v for k, v in fanned.items() if k != "run"}
        if sized:  # call.json says what each automatic request came to, and from which runs
            meta["autosized"] = {name: item.to_json() for name, item in sized.items()}
        if policy is not None:  # call.json says which request ran and where it came from
            meta["on_oom"] = policy.to_json()
            if escalated is not None:
                meta["escalated"] = escalated.to_json(policy.declared)
        key = cache.key_for(self.cache, meta, args, kwargs, bool(self.multiple_outputs))
        if key is not None:
            outcome = cache.serve(call.store, call.folder, meta, key, self.log)
            if outcome is not None:
                return self._decode(call.store, call.folder, outcome, meta)
        write_meta(packaged)
        self._execution = Execution(plan.runner(config), call)
        self._show_links(call.links)
        with advise_on_oom(policy, ti.try_number, self.retries), durable.until_the_call_ends(context):
            return self._continue(self._execution.start(), meta)

    def _take_over(self, config: Any, context: Any, earlier: Any) -> Any:
        """What to do with a call an earlier try submitted and never saw end (its worker
        died): use its result, follow it, or (returning _RUN_AFRESH) run the call again."""
        from airflow_infra.artifacts import CALL_META_FILE
        from airflow_infra.pipeline import durable
        from airflow_infra.pipeline.execute import Execution
        from airflow_infra.pipeline.package import reopen_call, store_for
        from airflow_infra.targets import runner_for
        from airflow_infra.targets.contract import ENDED, RUNNING

        store = store_for(config)
        handle, kind = earlier.handle, earlier.handle.kind
        target = config.targets.get(earlier.target)
        folder = store.path(earlier.folder)
        if target is None or target.kind != kind or not store.exists(folder / CALL_META_FILE):
            self.log.warning(
                "the task state store names try %s's call on target %r (%s %s), which infra.yaml or the store no "
                "longer has: running the call afresh", earlier.try_number, earlier.target, kind, handle.id,
            )
            durable.forget(context)
            return _RUN_AFRESH
        call, meta = reopen_call(
            store, dag_id=self.dag_id, task_id=self.task_id, run_id=context["run_id"], map_index=context["ti"].map_index,
            try_number=earlier.try_number, log=self.log, context=context, folder=folder,
        )
        runner = runner_for(earlier.target, config)
        if durable.finished(store, earlier) is not None:
            self.log.info(
                "try %s's call (%s %s) finished after its worker was lost: using its result from %s, not running it again",
                earlier.try_number, kind, handle.id, earlier.folder,
            )
            self._execution = Execution(runner, call, handle)
            self._show_links(call.links)
            with durable.until_the_call_ends(context):
                _release(runner, call, handle)
                return self._continue(None, meta)
        state = runner.status(call, handle)
        if state == RUNNING:
            self.log.info(
                "try %s's call (%s %s on target %r) still runs after its worker was lost: reattaching to it",
                earlier.try_number, kind, handle.id, earlier.target,
            )
            self._execution = Execution.reattach(runner, call, handle)
            self._show_links(call.links)
            with durable.until_the_call_ends(context):
                return self._continue(self._execution.follow(), meta)
        self.log.warning(
            "try %s's call (%s %s) %s without a result after its worker was lost: running it again",
            earlier.try_number, kind, handle.id, "ended" if state == ENDED else "is gone",
        )
        if state == ENDED:
            _release(runner, call, handle)
        durable.forget(context)
        return _RUN_AFRESH

    def _prepare_fan_out(self, config: Any, plan: Any, store: Any, folder: Any, args: list, kwargs: dict) -> tuple[dict, Any, list, dict]:
        """Write the chunks of items still without a good result into the call's folder;
        what the call runs (None when nothing is left to run), its plan with the whole
        pool's resources, and the arguments without the items."""
        import dataclasses

        from airflow_infra.pipeline import fanout

        spec = fanout.FanOut.from_json(self.fan_out, self.dag_id, self.task_id)
        value, args, kwargs = fanout.take_argument(self.python_callable, args, kwargs, spec.argument)
        items = fanout.items_of(value, spec, self.dag_id, self.task_id)
        runner = plan.kind.load_runner()
        if runner.fan_out is None:
            raise InfraTaskFailed(
                f"{where(self.dag_id, self.task_id)}: fan_out does not run on {plan.kind.name} targets (target "
                f"{plan.route.target!r}); route the task to a local, docker, batch or kubernetes target, or use .expand()"
            )
        digest = fanout.fingerprint(items, (args, kwargs))
        done = fanout.earlier_results(store, folder, digest, self.log)
        pending = [i for i in range(len(items)) if i not in done.indexes]
        parallelism = spec.parallelism or getattr(plan.target, "parallelism", None) or len(os.sched_getaffinity(0))
        # An array kind: a child per item, unless told otherwise or past the platform's limit.
        chunk = (spec.chunk or 1) if runner.fan_out == "array" else spec.chunk
        size = fanout.chunking(len(pending), chunk, parallelism, runner.max_chunks)
        uris, sizes, members = fanout.write_chunks(store, folder, items, pending, size)
        if runner.fan_out == "array":  # the platform runs the children: all at once unless told otherwise
            parallelism = spec.parallelism or len(uris) or 1
        self.log.info(
            "fan-out over %d items of %r: %d to run in %d chunks of up to %d, %d at a time; %d with a result from an earlier try",
            len(items), spec.argument, len(pending), len(uris), size, parallelism, len(done.indexes),
        )
        fanned = {
            "spec": spec.to_json(), "length": len(items), "digest": digest, "reused": done.chunks, "reused_items": len(done.indexes),
            "chunks": [fanout.segments(m) for m in members],
            "run": {"argument": spec.argument, "chunks": uris, "sizes": sizes, "parallelism": parallelism,
                    "progress_seconds": FAN_OUT_PROGRESS_SECONDS} if uris else None,
        }
        if runner.fan_out == "array":  # each child is sized as one item
            return fanned, plan, args, kwargs
        # The call is the whole pool: `parallelism` items at once, each with the declared resources.
        resources = plan.resources
        pool = {name: getattr(resources, name) * min(parallelism, len(uris) or 1)
                for name in ("cpu", "memory") if getattr(resources, name) is not None}
        return fanned, dataclasses.replace(plan, resources=resources.model_copy(update=pool)), args, kwargs

    def _conclude_fan_out(self, store: Any, folder: Any, fanned: dict[str, Any]) -> Any:
        from airflow_infra.pipeline import fanout

        value = fanout.conclude(
            store, folder, fanout.FanOut.from_json(fanned["spec"], self.dag_id, self.task_id), fanned["length"],
            fanned["chunks"], fanned["reused"], fanned["reused_items"], fanned["digest"], self.dag_id, self.task_id, self.log,
        )
        self.log.info("Done. Returned the results of %d items (a lazy sequence downstream)", fanned["length"])
        return value

    def _autosized(self, config: Any, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The declaration with `memory="auto"` / `cpu="auto"` sized from the task's history
        (pipeline.autosize), before routing, so routing sees the sizes; and the sizes."""
        from airflow_infra.pipeline import autosize

        declared = self._declared()
        if not autosize.automatic(declared):
            return declared, {}
        from airflow_infra.pipeline.package import store_for

        return autosize.resolve(declared, config.autosize, store_for(config), self.dag_id, self.task_id, run_id, self.log)

    def _escalation(self, config: Any, context: Any, declared: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
        """The declaration this try runs with: `declared`, or its memory escalated after
        the previous try's out-of-memory kill (pipeline.escalation); the policy; the escalation."""
        from airflow_infra.pipeline.escalation import policy_for, previous_try
        from airflow_infra.pipeline.package import store_for

        policy = policy_for(self.on_oom, declared.get("memory"), config, self.log)
        if policy is None:
            return declared, None, None
        ti = context["ti"]
        escalated = previous_try(
            store_for(config), self.dag_id, context["run_id"], self.task_id, ti.map_index, ti.try_number, policy
        )
        if escalated is None or escalated.memory == policy.declared:
            return declared, policy, None
        return {**declared, "memory": escalated.memory}, policy, escalated

    def _log_escalation(self, escalated: Any, policy: Any, unescalated: dict[str, Any], plan: Any, config: Any) -> None:
        from airflow_infra.pipeline.plan import plan_call
        from airflow_infra.quantities import format_bytes

        # Where the request before escalation would have gone: more memory can move the task.
        before = plan_call(unescalated, self.target, config, dag_id=self.dag_id, task_id=self.task_id, dag_file=self._dag_file)
        moved = (f"routed to target {plan.route.target!r} (was {before.route.target!r})" if before.route.target != plan.route.target
                 else f"still routed to target {plan.route.target!r}")
        why = ("out-of-memory kill" if escalated.oom else "failure (kept from that escalated try)")
        self.log.info(
            "memory escalated from %s to %s after try %d's %s (on_oom=%r, cap %s); %s",
            format_bytes(policy.declared), format_bytes(escalated.memory), escalated.after_try, why, policy.on_oom,
            format_bytes(policy.cap), moved,
        )

    def _connections(self, plan: Any) -> Any:
        """The declared connections' values, looked up now (a missing one fails the task,
        naming it), once the target is known to deliver them; None when none are declared."""
        if not self.connections:
            return None
        from airflow_infra.pipeline.connections import require_delivery, resolve_connections

        task = where(self.dag_id, self.task_id)
        require_delivery(
            plan.kind.load_runner(), plan.target, plan.route.target, plan.kind.name, list(self.connections), task
        )
        values = resolve_connections(self.connections, task)
        self.log.info("connections for the call: %s (values delivered by the target, not stored)", ", ".join(values.ids))
        return values

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resume after the target deferred (a pod or Batch job waited for in the triggerer)."""
        from airflow_infra.config import load_config
        from airflow_infra.pipeline import durable
        from airflow_infra.pipeline.execute import Execution
        from airflow_infra.pipeline.package import reopen_call, store_for
        from airflow_infra.targets import runner_for

        config = load_config()
        ti = context["ti"]
        store = store_for(config)
        # The call this try submitted, or the earlier try's it reattached to (pipeline.durable).
        earlier = durable.recall(context, store, self.dag_id, context["run_id"], self.task_id, ti.map_index, self.log)
        call, meta = reopen_call(
            store, dag_id=self.dag_id, task_id=self.task_id, run_id=context["run_id"], map_index=ti.map_index,
            try_number=earlier.try_number if earlier else ti.try_number, log=self.log, context=context,
            folder=store.path(earlier.folder) if earlier else None,
        )
        self._execution = Execution.reopen(runner_for(meta["target"], config), call)
        self._show_links(call.links)
        from airflow_infra.pipeline.escalation import Policy

        with advise_on_oom(Policy.from_json(meta.get("on_oom")), ti.try_number, self.retries), durable.until_the_call_ends(context):
            return self._continue(self._execution.resume(event), meta)

    def _show_links(self, recorded: dict[str, str]) -> None:
        """Airflow stores a task instance's extra links when it ends, in this process: hand it
        the links the target records (live), and only those, so no empty link is stored."""
        self.operator_extra_links = RecordedLinks(type(self).operator_extra_links, recorded)

    def _continue(self, deferral: Any, meta: dict[str, Any]) -> Any:
        """Defer if the target asked to; else read the ended call's outcome."""
        if deferral is not None:
            self.defer(trigger=deferral.trigger, method_name="execute_complete", timeout=deferral.timeout)
        from airflow_infra.pipeline import cache
        from airflow_infra.pipeline.decode import read_outcome

        execution, self._execution = self._execution, None
        store, folder = execution.call.store, execution.outcome_folder
        outcome = read_outcome(store, folder, where(self.dag_id, self.task_id))
        if meta.get("fan_out") and outcome.get("ok"):  # the pool ran: the chunks' reports say how each item did
            return self._conclude_fan_out(store, folder, meta["fan_out"])
        result = self._decode(store, folder, outcome, meta)
        if meta.get("autosized"):
            from airflow_infra.pipeline import autosize

            autosize.record(store, meta, outcome, self.log)
        key = meta.get("cache", {}).get("key")
        if key is not None:
            cache.record(store, key, folder, meta)
        return result

    def _decode(self, store: Any, folder: Any, outcome: dict[str, Any], meta: dict[str, Any]) -> Any:
        from airflow_infra.pipeline.decode import decode

        value = decode(
            store, folder, outcome, requested=meta["resources"], multiple_outputs=bool(self.multiple_outputs),
            log=self.log, where=where(self.dag_id, self.task_id),
        )
        if self.show_return_value_in_logs:  # as PythonOperator says it
            self.log.info("Done. Returned value was: %s", value)
        else:
            self.log.info("Done. Returned value not shown")
        return value

    def on_kill(self) -> None:
        """Airflow's SIGTERM: the task was stopped (its call is killed), or its worker is
        shutting down while the task still runs: then the call is left running, this try
        fails, and the next one reattaches to it (pipeline.durable.shutting_down)."""
        from airflow_infra.pipeline import durable

        execution = self._execution
        if execution is None:
            return
        if execution.detachable and durable.shutting_down(execution.call.context, self.log) and execution.detach():
            message = (
                f"{execution.call.where}: the worker is shutting down while Airflow still runs this task; its call "
                f"({execution.handle.kind} {execution.handle.id}) is left running and the next try reattaches to it"
            )
            self.log.warning("%s", message)
            raise durable.CallLeftRunning(message)
        execution.kill()
