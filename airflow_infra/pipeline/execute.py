"""Execute a call through its target's runner: prepare, submit (the handle is stored at
once), wait or defer, resume, collect, and explain an end without an outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_infra.artifacts import HANDLE_FILE, OUTCOME_FILE
from airflow_infra.errors import InfraStoreError, InfraTaskFailed
from airflow_infra.pipeline import durable
from airflow_infra.pipeline.durable import CallLeftRunning
from airflow_infra.pipeline.escalation import InfraOutOfMemory, record_oom
from airflow_infra.targets.contract import Call, Deferral, Handle, Runner
from airflow_infra.targets.oom import OutOfMemory


def save_handle(call: Call, handle: Handle) -> None:
    handle.links = dict(call.links)  # so that a resumed attempt still shows them
    # Not fsynced: on a local store the handle names a process or container of this machine
    # (the kinds that run elsewhere need an object store, where a PUT is durable), which a
    # crash of the machine ends too; nothing reads a handle once its call has gone.
    call.store.write_bytes(call.folder / HANDLE_FILE, handle.to_json().encode(), durable=False)


def load_handle(call: Call) -> Handle:
    handle = Handle.from_json(call.store.read_bytes(call.folder / HANDLE_FILE))
    call.links.update(handle.links)
    return handle


class Execution:
    """One call on one runner. The operator keeps it so that on_kill reaches the call."""

    def __init__(self, runner: Runner, call: Call, handle: Handle | None = None):
        self.runner, self.call, self.handle = runner, call, handle
        self._killed = False
        self._waiting = False  # inside wait or resume: the only time the call can be left running

    def start(self) -> Deferral | None:
        """Run the call; None when it has ended (its outcome is in `outcome_folder`), or a
        Deferral to wait for in the triggerer."""
        self.runner.prepare(self.call)
        if self._killed:
            raise InfraTaskFailed(f"{self.call.where}: the task was killed before its call started")
        self.handle = self.runner.submit(self.call)
        save_handle(self.call, self.handle)
        durable.remember(self.call, self.runner.name, self.handle)  # a later try finds it if this worker dies
        if self._killed:  # killed while submitting: the call may have started regardless
            self.runner.kill(self.handle)
        return self._settle(lambda: self.runner.wait(self.call, self.handle))

    @classmethod
    def reopen(cls, runner: Runner, call: Call) -> Execution:
        return cls(runner, call, load_handle(call))

    @classmethod
    def reattach(cls, runner: Runner, call: Call, handle: Handle) -> Execution:
        """Take over a call an earlier try submitted and that still runs (pipeline.durable)."""
        call.links.update(handle.links)
        runner.reattach(call, handle)
        return cls(runner, call, handle)

    def follow(self) -> Deferral | None:
        """Wait for a reattached call, as start() waits for the call it submitted."""
        return self._settle(lambda: self.runner.wait(self.call, self.handle))

    def resume(self, event: dict | None) -> Deferral | None:
        return self._settle(lambda: self.runner.resume(self.call, self.handle, event))

    def kill(self) -> None:
        self._killed = True
        if self.handle is not None:
            self.runner.kill(self.handle)

    @property
    def detachable(self) -> bool:
        """Whether the call could be left running for the task's next try: it is durable and
        being waited for (not being submitted or collected: then it is killed, as before)."""
        return self.handle is not None and self._waiting and self.call.durable and not self._killed

    def detach(self) -> bool:
        """Stop following the call, leaving it running for the task's next try (the worker is
        shutting down); False when the runner cannot leave it so."""
        return self.detachable and self.runner.detach(self.handle)

    @property
    def outcome_folder(self):
        """Where the outcome is: the call's folder, or the one of the call a runner reattached to."""
        folder = self.handle.folder
        if folder.rpartition("/")[0] != self.call.folder_uri.rpartition("/")[0]:  # a stored handle is not trusted
            raise InfraStoreError(f"{self.call.where}: the stored handle names {folder!r}, which is not a folder of this task")
        return self.call.store.path(folder)

    def _settle(self, step: Callable[[], Deferral | None]) -> Deferral | None:
        call, handle = self.call, self.handle
        error: Exception | None = None
        self._waiting = True
        try:
            deferral = step()
        except BaseException as exc:
            self._waiting = False
            if (left := _left_running(exc)) is not None:
                raise left  # the runner let go of the call: nothing to kill, collect or explain
            unwinding = _unwinding(exc)
            if unwinding is not None:
                # Airflow's execution_timeout or a signal unwinding the task: the call must not
                # outlive it, on any target (process group, container, pod, job).
                try:
                    self.runner.kill(handle)
                finally:
                    self.runner.collect(call, handle)
                raise unwinding from None
            error = exc  # explained below, unless the call wrote its own outcome
        else:
            self._waiting = False
            if deferral is not None:
                save_handle(call, handle)
                return deferral
        self.runner.collect(call, handle)
        if handle.folder != call.folder_uri:
            # Reattached to a call an earlier attempt of this try started: the folder this
            # attempt prepared was never used.
            call.log.info("reattached to a call that was already running: its results are in %s", handle.folder)
            call.store.remove_tree(call.folder)
        if call.store.exists(self.outcome_folder / OUTCOME_FILE):
            return None  # ok, or the function failed and said why: the decoder reports either
        if call.chunks and _any_chunk_reported(self.outcome_folder):
            # A fan-out's children ran (some may have died): each chunk's report says how its
            # items did, and pipeline.fanout judges them. The children write no outcome of their own.
            call.store.write_json(self.outcome_folder / OUTCOME_FILE, {"ok": True, "ended": str(error or "") or None})
            return None
        explanation = self.runner.explain(call, handle, error)
        if isinstance(explanation, OutOfMemory):  # the target reported an out-of-memory kill
            # Recorded before the try fails: the next try reads it to escalate (pipeline.escalation).
            record_oom(call, explanation.limit, explanation.evidence)
            raise InfraOutOfMemory(f"{call.where}: {explanation}", call.resources.memory) from None
        raise InfraTaskFailed(f"{call.where}: {explanation}") from None


def _any_chunk_reported(folder: Any) -> bool:
    try:
        return any(p.name.startswith("chunk-") and p.name.endswith(".json") for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


def _left_running(exc: BaseException) -> CallLeftRunning | None:
    """The CallLeftRunning behind `exc` (a library's cleanup may have raised over it), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CallLeftRunning):
            return seen
        seen = seen.__context__
    return None


def _unwinding(exc: BaseException) -> BaseException | None:
    """The exception unwinding the task (AirflowTaskTimeout, AirflowTaskTerminated, ...: not
    an Exception), even where a provider's cleanup raised another one over it (the pod
    operator's `finally` does)."""
    seen: BaseException | None = exc
    while seen is not None:
        if not isinstance(seen, Exception):
            return seen
        seen = seen.__context__
    return None
