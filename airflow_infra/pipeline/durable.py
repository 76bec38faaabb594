"""Durable calls: a call outlives the worker that started it, and the task's next try finds it.

As soon as a call is submitted, where it runs (its target and handle) and where it writes
(its folder) are kept in Airflow 3.3's task state store, which the tries of one task
instance share. A try that ends the normal way, in success or failure, forgets them. So a
try that finds them comes after a try whose worker died (kill -9, a lost machine, a
heartbeat timeout), and then:

  - the call wrote a good outcome (it finished after its worker was lost): its result is
    used, and nothing runs again;
  - the call still runs (a container, a pod, a Batch job): the try reattaches to it and
    waits for it, as the first try would have;
  - otherwise (gone without a result, or it failed): the try runs the call afresh.

Where the context has no task state store (Airflow before 3.3), calls are not durable and
the log says so once per try. The artifact store does not stand in: only the state store
is shared by a task instance's tries and nothing else (a cleared task gets fresh tries,
and each try forgets at its end).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from airflow_infra.artifacts import OUTCOME_FILE, path_component
from airflow_infra.targets.contract import Call, Handle

KEY = "airflow_infra.call"
_PLAIN = re.compile(r"[\x21-\x7e]{1,512}\Z")  # container ids, pod names, job ids: printable, no spaces (they reach logs)
_TRY_FOLDER = re.compile(r"[1-9][0-9]{0,8}(-[1-9][0-9]{0,8})?\Z")  # artifacts.task_dir's names: {try} or {try}-{attempt}


class CallLeftRunning(BaseException):
    """Raised into the task (from on_kill) when its worker is shutting down while Airflow
    still runs it: the call is left running and this try fails, so that the next one
    reattaches (pipeline.durable). A BaseException, like Airflow's own AirflowTaskTimeout,
    so that no `except Exception` on the way swallows it."""


@dataclass(frozen=True)
class Earlier:
    """A call an earlier try of this task instance submitted and never saw end."""

    try_number: int
    target: str
    folder: str
    handle: Handle


def _state_store(context: Any) -> Any:
    return context.get("task_state_store") if context is not None else None


def available(context: Any) -> bool:
    """Whether a later try of this task instance can find this try's call."""
    return _state_store(context) is not None


def recall(context: Any, store: Any, dag_id: str, run_id: str, task_id: str, map_index: int, log: Any) -> Earlier | None:
    """The call an earlier try left running, if the task state store holds one of this task
    instance's. A value that is not ours, or names a folder outside this task instance's,
    is ignored with a warning: the state store is writable through Airflow's REST API."""
    state = _state_store(context)
    if state is None:
        log.info("Airflow gives no task state store to this task: if its worker dies, the next try runs the call again")
        return None
    value = state.get(KEY)
    if value is None:
        return None
    base = store.uri(store.root / f"{path_component(dag_id)}/{path_component(run_id)}/{path_component(task_id)}/{map_index}")
    try:
        folder, target, handle = value["folder"], value["target"], Handle.from_json(value["handle"])
        try_number = value["try_number"]
        if not (isinstance(folder, str) and folder.startswith(base + "/") and _TRY_FOLDER.match(folder[len(base) + 1:])):
            raise ValueError(f"folder {folder!r} is not one of this task instance's")
        if not (isinstance(target, str) and isinstance(try_number, int) and handle.folder == folder):
            raise ValueError("target, try number or handle malformed")
        if not all(isinstance(v, str) and _PLAIN.match(v) for v in (handle.kind, handle.target, handle.id)):
            raise ValueError("the handle's kind, target or id is not a plain name")
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the task state store's %r: not a call this task started (%s)", KEY, exc)
        return None
    return Earlier(try_number, target, folder, handle)


def remember(call: Call, target: str, handle: Handle) -> None:
    """Keep where the call runs, for a try that comes after this one's worker died."""
    state = _state_store(call.context)
    if state is not None:
        state.set(KEY, {"try_number": call.try_number, "target": target, "folder": handle.folder, "handle": handle.to_json()})


def forget(context: Any) -> None:
    """This try saw its call end: nothing is left for a later try to find."""
    state = _state_store(context)
    if state is not None:
        state.delete(KEY)


def shutting_down(context: Any, log: Any, within: float = 3.0) -> bool:
    """Whether a SIGTERM this try got means its worker is shutting down (a graceful stop of
    a Celery worker or of a worker pod) rather than that the task was stopped (marked failed
    or success, cleared, or dropped for missed heartbeats): Airflow still has this try
    running and it has a retry left, which will reattach to the call.

    Asked of the API server through the task's supervisor, which serves requests while it
    waits for the task to stop. From a thread, with a deadline: on_kill runs in a signal
    handler that may have interrupted this very thread inside a request, whose lock the
    question would then wait for forever. No answer in time counts as "stopped": the call
    is killed, as it always was."""
    import threading

    ti = context["ti"] if context is not None else None
    if ti is None or _state_store(context) is None or ti.try_number > ti.max_tries:
        return False
    answer: dict[str, Any] = {}

    def ask() -> None:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        try:
            states = RuntimeTaskInstance.get_task_states(
                dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=ti.map_index,
            )
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}_{ti.map_index}"
            answer["state"] = (states.get(ti.run_id) or {}).get(key)
        except Exception as exc:  # noqa: BLE001 - said below; then the call is killed
            answer["error"] = exc

    asking = threading.Thread(target=ask, name="airflow-infra-ask-state", daemon=True)
    asking.start()
    asking.join(within)
    if "state" not in answer:
        log.warning("could not ask Airflow whether this task still runs (%s): stopping its call",
                    answer.get("error", f"no answer within {within:g}s"))
        return False
    return answer["state"] == "running"


def finished(store: Any, earlier: Earlier) -> dict[str, Any] | None:
    """The outcome the earlier call wrote, when it is a good one."""
    path = store.path(earlier.folder) / OUTCOME_FILE
    if not store.exists(path):
        return None
    outcome = store.read_json(path)
    return outcome if isinstance(outcome, dict) and outcome.get("ok") is True else None


@contextmanager
def until_the_call_ends(context: Any) -> Iterator[None]:
    """Forget the call when this try has seen it end, in success or failure (a signal or a
    timeout included: the call is killed then); keep it while the try defers, or when the
    worker shut down and left it running for the next try."""
    from airflow.sdk.exceptions import TaskDeferred

    try:
        yield
    except (TaskDeferred, CallLeftRunning):
        raise
    except BaseException:
        forget(context)
        raise
    forget(context)
