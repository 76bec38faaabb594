"""A test-only target kind, `fake`: each call runs as a plain subprocess of the worker's own
Python (no environment is built; declared packages are ignored), on a local artifact store.

It registers through the `airflow_infra.targets` entry point, exactly as a real third-party
kind would, and exercises every verb of the contract: with `defer: true` it hands Airflow a
trigger after the call ended, so resuming reads the stored handle back; `lose_outcome: true`
deletes the outcome the call wrote, so the failure must be explained.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Literal

from airflow_infra import runtime
from airflow_infra.artifacts import CALL_FILE, OUTCOME_FILE
from airflow_infra.targets.contract import Call, Deferral, Handle, Runner, TargetConfig, TargetKind

SUBMITTED: list[str] = []  # pids, for tests that run the pipeline in-process


class FakeTarget(TargetConfig):
    kind: Literal["fake"]
    defer: bool = False
    lose_outcome: bool = False


class FakeRunner(Runner):
    kind = "fake"
    _proc: subprocess.Popen | None = None

    def prepare(self, call: Call) -> None:
        if not call.store.is_local:
            raise ValueError("the fake kind needs a local artifact store")
        call.log.info("fake kind: preparing nothing for %s", call.where)

    def submit(self, call: Call) -> Handle:
        folder = call.store.local_path(call.folder)
        self._proc = subprocess.Popen(
            [sys.executable, "-P", runtime.__file__, str(folder / CALL_FILE), str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        SUBMITTED.append(str(self._proc.pid))
        return Handle(self.kind, self.name, str(self._proc.pid), call.folder_uri, {"submitted_by": os.getpid()})

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            call.log.info("fake: %s", line.rstrip("\n"))
        handle.details["exit_code"] = self._proc.wait()
        if self.target.lose_outcome:
            (call.store.local_path(call.folder) / OUTCOME_FILE).unlink(missing_ok=True)
        if self.target.defer:
            from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
            import datetime as dt

            return Deferral(TimeDeltaTrigger(dt.timedelta(seconds=0)))
        return None

    def resume(self, call: Call, handle: Handle, event: dict[str, Any] | None) -> Deferral | None:
        call.log.info("fake kind: resumed call %s (submitted by process %s)", handle.id, handle.details.get("submitted_by"))
        handle.details["resumed"] = True
        return None

    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        return f"fake call {handle.id} ended with exit code {handle.details.get('exit_code')} and no outcome"

    def kill(self, handle: Handle) -> None:
        try:
            os.killpg(int(handle.id), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


KIND = TargetKind(name="fake", schema=FakeTarget, runner="airflow_infra_fake_kind:FakeRunner", needs_image=False)
