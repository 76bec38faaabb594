"""The contract every target kind implements, and what a kind registers.

A call goes through the same verbs on every kind:

    prepare(call)                  build or find its environment or image
    submit(call) -> Handle         start it; the handle is plain JSON, stored in the call's folder
    wait(call, handle)             block until it ends, or return a Deferral (Airflow's triggerer waits)
    resume(call, handle, event)    after a deferral: finish waiting (or defer again)
    collect(call, handle)          make sure what the call wrote (outcome.json last) is in the store
    explain(call, handle, error)   why it ended without an outcome, in words a user can act on
    kill(handle)                   stop it and everything it started
    status(call, handle)           after the worker that submitted it died: running, ended or gone
    reattach(call, handle)         follow such a call that still runs (then wait/resume/collect it)
    detach(handle)                 the worker is shutting down: stop following, leave it running

`airflow_infra.pipeline.execute` drives them. A runner sees only the Call and its own
handles: never the operator, never Airflow's task instance beyond the context it may hand
to a provider operator it delegates to. Deferral is a value a runner returns, not an
exception it re-raises, so the operator decides how Airflow resumes.

Kept light (pydantic and the standard library): infra.yaml validation imports it.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import import_module
from logging import Logger
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from airflow_infra.errors import where
from airflow_infra.spec import Environment, Resources

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_infra.artifacts import ArtifactStore
    from airflow_infra.config import InfraConfig


class TargetConfig(BaseModel):
    """The base of every kind's infra.yaml schema: `kind` picks the schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str


@dataclass(frozen=True)
class Call:
    """One call to run: who it is, what it declared, and where its files live in the store."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    environment: Environment
    resources: Resources
    store: ArtifactStore
    folder: ObjectStoragePath  # call.pkl in; outputs and outcome.json out
    log: Logger
    refs: tuple[str, ...] = ()  # artifact URIs the arguments name (a staged run downloads them)
    requirements_path: Path | None = None
    requirements_text: str | None = None
    context: Any = None  # Airflow's task context: for provider operators a kind delegates to
    links: dict[str, str] = field(default_factory=dict)  # extra links recorded so far: {part: url}
    # A fan-out's number of chunks (pipeline.fanout): a kind that runs one child per chunk
    # (an array job, an Indexed Job) starts this many; 0: a single call.
    chunks: int = 0
    parallelism: int = 0  # how many of those at once (0: as the platform likes)
    # Whether a later try of this task instance can find this call (pipeline.durable): then a
    # kind whose calls would end with their worker (local) lets them run on without it.
    durable: bool = False
    # The declared Airflow connections' values (pipeline.connections.ConnectionValues), for
    # the runner to deliver to the call; never written anywhere. Out of repr and comparisons.
    connections: Any = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        return where(self.dag_id, self.task_id)

    @property
    def folder_uri(self) -> str:
        return self.store.uri(self.folder)

    def publish_link(self, part: str, url: str | None) -> None:
        """Show `url` as this task instance's extra link `part` (image, pod, batch_job)."""
        if url:
            self.links[part] = url


@dataclass
class Handle:
    """How to find a submitted call again, from this attempt or a later one.

    `folder` is where the call writes its outcome: normally the call's own, but a kind that
    reattached to a call an earlier attempt started returns that call's folder.
    `details` holds the kind's own JSON-able facts (a namespace, an exit code once known).
    """

    kind: str
    target: str
    id: str
    folder: str
    details: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # the call's extra links when the handle was stored

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Handle:
        data = json.loads(text)
        return cls(
            **{k: data[k] for k in ("kind", "target", "id", "folder")},
            details=dict(data.get("details") or {}),
            links=dict(data.get("links") or {}),
        )


@dataclass(frozen=True)
class Deferral:
    """Wait for the call in Airflow's triggerer: the operator defers with this trigger and
    comes back to the runner's `resume` with the trigger's event."""

    trigger: Any
    timeout: dt.timedelta | None = None


# What Runner.status says of a call an earlier try submitted (pipeline.durable).
RUNNING, ENDED, GONE = "running", "ended", "gone"


class Runner(ABC):
    """One kind's implementation of the verbs, for one call at a time (a fresh runner per call)."""

    kind: ClassVar[str]
    # Whether submit() delivers call.connections to the call (each kind its own way, never
    # through a file in the store, a spec's plain env, arguments or a log). Calls that
    # declare connections are refused on kinds that do not, before anything is built.
    delivers_connections: ClassVar[bool] = False
    # How a fan-out (pipeline/fanout.py) runs here: "pool" (the call is one process or
    # container that runs the chunks in a pool inside it: runtime.drive_fan_out), "array"
    # (one child per chunk, which the platform tells its index: an array job, an Indexed
    # Job), or None (not here). `max_chunks`: the most children the platform takes.
    fan_out: ClassVar[str | None] = None
    max_chunks: ClassVar[int | None] = None

    def __init__(self, name: str, target: TargetConfig, config: InfraConfig):
        self.name, self.target, self.config = name, target, config

    @classmethod
    def connections_refusal(cls, target: TargetConfig) -> str | None:
        """Why this target cannot deliver connections although its kind can (a setting it
        lacks), saying what to set; None when it can. Checked, like delivers_connections,
        before anything is built, written or submitted."""
        return None

    def prepare(self, call: Call) -> None:
        """Build or find what the call runs in (an environment, an image). Default: nothing."""

    @abstractmethod
    def submit(self, call: Call) -> Handle:
        """Start the call; return as soon as it can be found again."""

    @abstractmethod
    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        """Block until the call ends (None), or return a Deferral to wait in the triggerer."""

    def resume(self, call: Call, handle: Handle, event: dict[str, Any] | None) -> Deferral | None:
        """Finish a call after the trigger fired. Kinds that never defer keep this default."""
        raise NotImplementedError(f"target kind {self.kind!r} does not defer")

    def collect(self, call: Call, handle: Handle) -> None:
        """Bring what the call wrote into the store (outcome.json last) and release what the
        call held. Called once after wait/resume ends, also when it raised. Default: the call
        wrote to the store itself."""

    @abstractmethod
    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        """Why the call ended without writing its outcome (error: what waiting raised, if anything)."""

    @abstractmethod
    def kill(self, handle: Handle) -> None:
        """Stop the call and everything it started. Safe to call twice, or after it ended."""

    def status(self, call: Call, handle: Handle) -> str:
        """Whether a call an earlier try submitted (its worker died since) still runs
        (RUNNING), has ended (ENDED) or cannot be found (GONE). Default GONE: the kind's calls
        end with their worker (the local kind's do, on purpose)."""
        return GONE

    def reattach(self, call: Call, handle: Handle) -> None:
        """Take over a call status() found RUNNING: wait, resume, collect and kill then work
        on it as if this runner had submitted it. Kinds whose calls never outlive their
        worker keep this default, which status() never lets run."""
        raise NotImplementedError(f"target kind {self.kind!r} does not reattach")

    def detach(self, handle: Handle) -> bool:
        """The worker is shutting down while Airflow still runs the task (pipeline.execute):
        stop following the call and leave it running for the task's next try, which
        reattaches; never kill it. False when it cannot be left so (then it is killed).
        Default: the call runs elsewhere (a container, a pod, a job) and outlives its
        follower as it is."""
        return True


@dataclass(frozen=True)
class TargetKind:
    """What a kind registers: its infra.yaml schema, its runner, and whether it runs images.

    Built-in kinds and third-party ones (entry point group `airflow_infra.targets`, value
    `package.module:KIND`) register the same way; see airflow_infra.targets.
    """

    name: str
    schema: type[TargetConfig]
    runner: str  # "module:Class", imported only when a call runs (keeps provider imports out of config loading)
    needs_image: bool
    # "module:Class" of the kind's extra links (airflow_infra.links.InfraLink subclasses). Light
    # modules: built-in kinds' links load when a DAG file is parsed.
    links: tuple[str, ...] = ()

    def load_runner(self) -> type[Runner]:
        module, _, attr = self.runner.partition(":")
        return getattr(import_module(module), attr)


# -- helpers the process-running kinds (local, docker) share --------------------------------


@contextmanager
def deadline(seconds: float | None, on_expiry: Callable[[], None]) -> Iterator[None]:
    """Call on_expiry (from a timer thread) if the block is still running after `seconds`."""
    timer = threading.Timer(seconds, on_expiry) if seconds else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()


def describe_exit(code: int) -> str:
    """A process's end in words: its exit code, or the signal that killed it. Never a guess
    at why: "out of memory" is said only where the kernel or the runtime reports it (the
    handle's `oom` fact), since a SIGKILL is also a kill by a person, a timeout or an eviction."""
    if code < 0 or code == 137:  # a signal; 137 is how a container reports SIGKILL
        signum = -code if code < 0 else code - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            return f"exit code {code}"
        return f"killed by {name}, signal {signum}" + (f", exit code {code}" if code > 0 else "")
    return f"exit code {code}"


def explain_process_end(call: Call, handle: Handle) -> str:
    """Why a call run as a process or container wrote no outcome, from the facts its runner
    recorded in the handle: exit code, elapsed seconds, whether it was killed, out of memory."""
    from airflow_infra.targets.oom import out_of_memory

    facts = handle.details
    timeout, elapsed = call.resources.timeout, facts.get("elapsed", 0.0)
    if facts.get("timed_out"):
        return f"timed out after {elapsed:.0f}s (timeout={timeout:g}s); raise `timeout` or make the task faster"
    if facts.get("killed"):
        return "the task was killed; its process group was stopped"
    if facts.get("oom"):
        return out_of_memory(call.resources.memory, facts.get("oom_evidence") or "reported by the target")
    if "exit_code" in facts:
        return f"the task process died ({describe_exit(int(facts['exit_code']))}) before writing a result"
    return "the task process ended before writing a result"
