"""The local target's runner: the call runs in its own process group, forked from a warm
runtime in a cached uv virtual environment (see server.py), inside a cgroup of its own that
holds its declared memory and cpu as limits where the worker may make one (cgroups.py).

A durable call (a later try of the task can find it: pipeline.durable) outlives a worker
that dies or is shut down: the runtime server then follows it, keeping its output and exit
in its scratch folder (runtime.serve), where the task's next try on this machine follows
it. Its identity is kept in that folder too (EARLIER), written by this worker and read
back only for the folder the handle names: the handle comes from the task state store,
which Airflow's REST API can write, so it never chooses which process is followed or killed."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_infra import runtime
from airflow_infra.targets.contract import GONE, RUNNING, Call, Deferral, Handle, Runner, deadline, explain_process_end
from airflow_infra.targets.local import cgroups
from airflow_infra.targets.local.processes import ProcessRef, boot_id
from airflow_infra.targets.local.server import RunningCall, ServerGone, forget, server_for
from airflow_infra.targets.local.venvs import child_environ, ensure_env
from airflow_infra.targets.output import OutputLines, log_line
from airflow_infra.targets.staging import StagedCall, own_scratch

EARLIER = ".call.json"  # in a durable call's scratch folder: {"folder": its store folder, "pid", "start", "boot"}
FOLLOW_INTERVAL = 0.5  # seconds between looks at a call an earlier try started


@dataclass(frozen=True)
class EarlierCall:
    """A durable call an earlier try's worker started on this machine."""

    scratch: Path
    process: ProcessRef

    @property
    def exit_file(self) -> Path:
        return self.scratch / runtime.OUTLIVED_EXIT

    @classmethod
    def find(cls, handle: Handle) -> EarlierCall | None:
        """The call `handle` names, if its scratch folder is one this user made here and says
        it holds the call of the handle's folder (which pipeline.durable checked is this
        task instance's); None for anything else, another machine's call included."""
        scratch = own_scratch(handle.details.get("scratch"))
        if scratch is None:
            return None
        try:
            said = json.loads((scratch / EARLIER).read_text())
        except (OSError, ValueError):
            return None
        process = ProcessRef.from_details(said) if isinstance(said, dict) else None
        if process is None or said.get("folder") != handle.folder or process.boot != boot_id():
            return None
        return cls(scratch, process)


class LocalRunner(Runner):
    kind = "local"
    delivers_connections = True  # in the request the warm server forks the call from (server.py)
    fan_out = "pool"

    _python: Path
    _staged: StagedCall | None = None
    _running: RunningCall | None = None
    _cgroup: cgroups.CallCgroup | None = None
    _earlier: EarlierCall | None = None

    def prepare(self, call: Call) -> None:
        from airflow_infra.config import env_cache_dir

        ignored = [f for f in ("apt_packages", "base_image") if getattr(call.environment, f)]
        if ignored:
            call.log.warning("%s: %s only apply to images; the local target ignores them", call.where, ", ".join(ignored))
        self._python, built = ensure_env(
            call.environment,
            env_cache_dir(),
            requirements_text=call.requirements_text,
            requirements_path=call.requirements_path,
            log=lambda line: call.log.info("[uv] %s", line),
        )
        call.log.info("environment %s (%s)", self._python.parent.parent.name, "built now" if built else "cached")

    def submit(self, call: Call) -> Handle:
        self._staged = StagedCall.open(call)
        handle = Handle(self.kind, self.name, "", call.folder_uri)
        self._cgroup = cgroups.for_call(
            self.target.cgroup_root, self.target.cgroup_parent, call.resources.memory, call.resources.cpu,
            lambda level, line: getattr(call.log, level)("%s", line),
        )
        try:
            server = server_for(self._python, child_environ({}))
            connections = call.connections.document() if call.connections else None
            self._running = server.start(
                self._staged.argv, self._staged.scratch, call.environment.env, connections,
                self._cgroup.join_files if self._cgroup else None,
                outlive={"timeout": call.resources.timeout} if call.durable else None,
            )
        except ServerGone as exc:
            forget(self._python)
            handle.details["server_died"] = str(exc)
            return handle
        except BaseException:
            self._release_cgroup(call)  # nothing runs in it: collect() is not reached from here
            raise
        handle.id = str(self._running.pid)
        self._started = time.monotonic()
        if call.durable:
            self._keep_for_later_tries(call, handle)
        return handle

    def _keep_for_later_tries(self, call: Call, handle: Handle) -> None:
        process = ProcessRef.of(self._running.pid)  # a zombie still has its start time: the server reaps later
        if process is None:
            return
        scratch = self._staged.scratch
        (scratch / EARLIER).write_text(json.dumps({"folder": call.folder_uri, **process.as_details()}))
        handle.details["scratch"] = str(scratch)
        if self._cgroup is not None:
            handle.details["cgroup"] = self._cgroup.as_details()

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        if self._earlier is not None:
            return self._follow_earlier(call, handle, self._earlier)
        running = self._running
        if running is None:
            return None  # the server could not take the call: explained from the handle
        def expire() -> None:
            handle.details["timed_out"] = True
            running.kill()

        try:
            with deadline(call.resources.timeout, expire):
                handle.details["exit_code"] = code = running.stream(
                    lambda line: log_line(call.log, line), self._cgroup.kill_all if self._cgroup else None,
                )
            if self._cgroup is not None and (evidence := self._cgroup.oom_evidence(code)):
                handle.details.update(oom=True, oom_evidence=evidence)
        except ServerGone as exc:
            forget(self._python)
            handle.details["server_died"] = str(exc)
        except BaseException:
            # Airflow's execution_timeout or a signal unwinding the task: the call must not outlive it.
            running.kill()
            raise
        finally:
            handle.details["elapsed"] = time.monotonic() - self._started
        return None

    # -- a call an earlier try's worker started (pipeline.durable) ---------------------------

    def status(self, call: Call, handle: Handle) -> str:
        """RUNNING while the call runs on this machine, or has ended since and left its exit
        in its scratch folder (following it then reads its output and exit at once, and
        uploads what it wrote to a remote store); GONE otherwise, another machine's call
        included: its scratch folder and process are out of reach from here."""
        earlier = EarlierCall.find(handle)
        if earlier is None:
            call.log.warning("the local call %s is not one this machine can follow (another machine's, or not this "
                             "task instance's)", handle.id)
            return GONE
        return RUNNING if earlier.exit_file.exists() or earlier.process.alive else GONE

    def reattach(self, call: Call, handle: Handle) -> None:
        self._adopt(handle)
        if not call.store.is_local:
            self._staged = StagedCall.reopen(call, self._earlier.scratch)  # close() uploads what it wrote, then removes it
        self._started = time.monotonic()

    def _adopt(self, handle: Handle) -> bool:
        """Take on the earlier call `handle` names, to follow, kill or release it."""
        if self._earlier is None and self._running is None:
            self._earlier = EarlierCall.find(handle)
            if self._earlier is not None:
                self._cgroup = cgroups.reopen(self.target.cgroup_root, self.target.cgroup_parent, handle.details.get("cgroup"))
        return self._earlier is not None

    def _follow_earlier(self, call: Call, handle: Handle, earlier: EarlierCall) -> None:
        """Pass on what the call wrote since its worker died (the server keeps it), until its
        exit is there or, should the server have died too, its process has gone."""
        output, offset, lines = earlier.scratch / runtime.OUTLIVED_OUTPUT, 0, OutputLines()
        try:
            while True:
                ended = earlier.exit_file.exists() or not earlier.process.alive  # before reading: nothing is missed
                try:
                    with open(output, "rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read()
                except FileNotFoundError:
                    chunk = b""
                offset += len(chunk)
                for line in lines.feed(chunk):
                    log_line(call.log, line)
                if ended:
                    break
                time.sleep(FOLLOW_INTERVAL)
            for line in lines.flush():
                log_line(call.log, line)
        finally:
            handle.details["elapsed"] = time.monotonic() - self._started
        try:
            ended_so = json.loads(earlier.exit_file.read_text())
            handle.details["exit_code"] = code = int(ended_so["exit"])
            handle.details["timed_out"] = ended_so.get("timed_out") is True
        except (OSError, ValueError, KeyError, TypeError):
            handle.details["server_died"] = "it followed the call after the worker died, and ended before the call"
            return None
        if self._cgroup is not None and (evidence := self._cgroup.oom_evidence(code)):
            handle.details.update(oom=True, oom_evidence=evidence)
        return None

    def detach(self, handle: Handle) -> bool:
        """The worker is shutting down: leave the call to the server (it follows it to its
        end, runtime.serve), for the next try to follow. Only a durable call was started so."""
        if self._running is None or "scratch" not in handle.details:
            return False
        self._running.detach()
        forget(self._python)  # closes our end of the socket: the server follows the call from now
        self._cgroup = None  # the call still runs in it: the try that follows it removes it
        self._staged = None  # its scratch folder is where the next try finds it
        return True

    # -- the end --------------------------------------------------------------------------

    def collect(self, call: Call, handle: Handle) -> None:
        self._adopt(handle)  # an ended call of a dead worker's: what it held is released here
        self._release_cgroup(call)
        if self._staged is not None:
            self._staged.close()
            self._staged = None
        if self._earlier is not None:
            shutil.rmtree(self._earlier.scratch, ignore_errors=True)  # close() removed it on a remote store

    def _release_cgroup(self, call: Call) -> None:
        if self._cgroup is not None:
            # Also ends what the call started outside its process group (setsid, daemons).
            for left in self._cgroup.remove():
                call.log.warning("the call's cgroup could not be removed: %s", left)
            self._cgroup = None

    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        if "server_died" in handle.details:
            return f"the task's runtime process died ({handle.details['server_died']}) before writing a result"
        return explain_process_end(call, handle)

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        if self._running is not None:
            self._running.kill()
        elif self._adopt(handle):
            self._earlier.process.kill_group()
        if self._cgroup is not None:
            self._cgroup.kill_all()
