"""OOM escalation: a try killed for memory is retried by Airflow with more memory.

The declared field `on_oom` (or infra.yaml's `oom: {on_oom: ...}` as a platform policy; a
declared value wins) asks for it. It rides on Airflow's retries, nothing else:

- when a call is killed for memory (as its target reports it: targets.oom), the pipeline
  writes `oom.json` into the call's folder before the try fails (execute.Execution);
- the next try, before routing, reads the previous try's folder of the same dag/run/task/map
  index and, if it was an out-of-memory kill, asks for double the memory it ran with, never
  more than the cap (infra.yaml `oom.max_memory`, else 4x the declared memory). Routing then
  sees the escalated request, so more memory can move the task to another target;
- a try after an escalated one that failed for another reason keeps the escalated request:
  the declared one is known to be too small.

The record sits in a folder the call itself could write (the docker target mounts it), so a
call can at most ask for more memory for itself, which its author can do anyway; the cap is
the platform's bound. A record that is not what this module writes is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# Light imports only: operators check `on_oom` (check_on_oom) while a DAG file is parsed.
from airflow_infra.errors import InfraSpecError, InfraStoreError, InfraTaskFailed, where
from airflow_infra.quantities import format_bytes
from airflow_infra.spec import QUANTITY_PARSERS

if TYPE_CHECKING:
    from airflow_infra.artifacts import ArtifactStore
    from airflow_infra.config import InfraConfig
    from airflow_infra.targets.contract import Call

OOM_FILE = "oom.json"
ON_OOM_VALUES = ("double",)
DEFAULT_CAP_FACTOR = 4  # without infra.yaml's oom.max_memory: at most 4x the declared memory
_parse_memory = QUANTITY_PARSERS["memory"]


class InfraOutOfMemory(InfraTaskFailed):
    """The call was killed for memory, as its target reported it (targets.oom.OutOfMemory).
    `memory`: the request it ran with (bytes; None: it declared none)."""

    def __init__(self, message: str, memory: int | None):
        super().__init__(message)
        self.memory = memory


def check_on_oom(value: Any, dag_id: str | None, task_id: str | None, retries: Any, memory: Any) -> None:
    """Parse time: `on_oom` is None or 'double', on a task that declares `memory` (the
    request it doubles) and can be retried.

    Refused with retries=0 rather than documented: the escalated request runs in the next
    try, so on_oom without retries could never take effect, silently."""
    if value is None:
        return
    if type(value) is not str or value not in ON_OOM_VALUES:
        shown = repr(value)[:60]
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: on_oom={shown}: use 'double' (retry an out-of-memory kill with double the "
            "memory, up to infra.yaml's oom.max_memory or 4x the declared memory) or leave it out; it is not templated"
        )
    if memory is None:
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: on_oom={value!r} needs `memory`: it doubles the declared memory "
            "after an out-of-memory kill; declare memory (e.g. memory='1Gi')"
        )
    if isinstance(retries, int) and not isinstance(retries, bool) and retries < 1:
        raise InfraSpecError(
            f"{where(dag_id, task_id)}: on_oom={value!r} with retries={retries}: the escalated request runs in "
            "Airflow's next try of the task; set retries >= 1 (e.g. retries=2)"
        )


@dataclass(frozen=True)
class Policy:
    """This try's escalation policy: what to do on an out-of-memory kill, and the cap."""

    on_oom: str
    declared: int  # the declared memory, bytes
    cap: int
    cap_source: str

    def next_request(self, ran_with: int) -> int:
        return min(max(2 * ran_with, self.declared), self.cap)

    def to_json(self) -> dict[str, Any]:
        # Bytes too: format_bytes rounds a size that is no whole number of its unit.
        return {"on_oom": self.on_oom, "declared": format_bytes(self.declared), "cap": format_bytes(self.cap),
                "declared_bytes": self.declared, "cap_bytes": self.cap, "cap_source": self.cap_source}

    @classmethod
    def from_json(cls, data: Any) -> Policy | None:
        """The policy call.json recorded (a resumed, deferred try); None when it had none."""
        if not isinstance(data, dict) or data.get("on_oom") not in ON_OOM_VALUES:
            return None
        try:
            return cls(data["on_oom"], _parse_memory(data["declared_bytes"]), _parse_memory(data["cap_bytes"]), str(data["cap_source"])[:80])
        except (KeyError, TypeError, ValueError):
            return None  # only the advice in the error is lost; the next try decides from the record


def policy_for(declared_on_oom: str | None, memory: Any, config: InfraConfig, log: Any) -> Policy | None:
    """The policy for a call whose memory (rendered, any notation) is `memory`; None: no escalation."""
    on_oom = declared_on_oom or config.oom.on_oom
    if on_oom is None:
        return None
    if memory is None:  # only a platform policy gets here: a declared on_oom needs memory (parse time)
        log.info("on_oom=%r (infra.yaml) not applied: the task declares no `memory` to escalate", on_oom)
        return None
    try:
        declared = _parse_memory(memory)
    except ValueError:  # a rendered value that is no memory: planning reports it, naming DAG, task and field
        return None
    if config.oom.max_memory is not None:
        cap, source = max(config.oom.max_memory, declared), "infra.yaml oom.max_memory"
    else:
        cap, source = DEFAULT_CAP_FACTOR * declared, f"{DEFAULT_CAP_FACTOR}x the declared memory"
    return Policy(on_oom, declared, cap, source)


@dataclass(frozen=True)
class Escalation:
    memory: int  # the request this try uses
    ran_with: int  # what the previous try ran with
    after_try: int
    oom: bool  # False: kept from an escalated try that failed otherwise

    def to_json(self, declared: int) -> dict[str, Any]:
        return {"from": format_bytes(declared), "to": format_bytes(self.memory), "after_try": self.after_try,
                "previous_try_memory": format_bytes(self.ran_with), "reason": "out-of-memory kill" if self.oom else
                "kept: the previous (escalated) try failed otherwise"}


def previous_try(store: ArtifactStore, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int, policy: Policy) -> Escalation | None:
    """What the previous try of this call (same map index) says about memory; None: nothing to escalate."""
    from airflow_infra.artifacts import CALL_META_FILE  # not at parse time, where check_on_oom runs

    if try_number <= 1:
        return None
    before = try_number - 1
    folder = store.task_dir(dag_id, run_id, task_id, map_index, before, fresh=False)
    folder = store.path(store.uri(folder))  # the store's one path check, for every location read back
    record = _read(store, folder / OOM_FILE)
    if record is not None:
        return Escalation(policy.next_request(record), record, before, True)
    if not store.exists(folder / CALL_META_FILE):
        return None
    try:
        meta = store.read_json(folder / CALL_META_FILE)
    except ValueError:
        raise InfraStoreError(f"refusing {store.uri(folder / CALL_META_FILE)}: it is not JSON") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("escalated"), dict)):
        return None
    kept = _memory(meta.get("resources", {}).get("memory") if isinstance(meta.get("resources"), dict) else None, folder)
    return Escalation(min(max(kept, policy.declared), policy.cap), kept, before, False)


def _read(store: ArtifactStore, path: Any) -> int | None:
    """The memory an out-of-memory-killed try ran with, from its record; None: no record."""
    if not store.exists(path):
        return None
    try:
        record = store.read_json(path)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and set(record) <= {"oom", "memory", "limit", "evidence", "try_number"} and record.get("oom") is True):
        raise InfraStoreError(f"refusing {store.uri(path)}: it is not an out-of-memory record this provider writes")
    if record.get("memory") is None:  # it ran with no memory request: nothing to double
        return None
    return _memory(record["memory"], path)


def _memory(value: Any, where_from: Any) -> int:
    try:
        if type(value) is not int:
            raise ValueError(value)
        return _parse_memory(value)
    except ValueError:
        raise InfraStoreError(f"refusing {where_from}: its memory {str(value)[:40]!r} is not a memory request") from None


def record_oom(call: Call, limit: int | None, evidence: str) -> None:
    """Written before the try fails, so the next try can escalate (and the runs API shows it).
    `memory` is the request the call ran with, which escalation doubles; `limit` what the
    target enforced (None where it set none: a pod without a memory limit ran short on its node,
    and a larger request still helps, by placing it where more is free)."""
    call.store.write_json(
        call.folder / OOM_FILE,
        {"oom": True, "memory": call.resources.memory, "limit": limit, "evidence": evidence[:500], "try_number": call.try_number},
    )


@contextmanager
def advise_on_oom(policy: Policy | None, try_number: int, retries: int | None) -> Iterator[None]:
    """An out-of-memory kill raised inside says what follows it under the policy."""
    try:
        yield
    except InfraOutOfMemory as exc:
        said = advice(policy, exc.memory, try_number, retries)
        if not said:
            raise
        raise InfraOutOfMemory(f"{exc}{said}", exc.memory) from None


def advice(policy: Policy | None, ran_with: int | None, try_number: int, retries: int | None) -> str:
    """What follows an out-of-memory kill of this try, appended to its error."""
    if policy is None or ran_with is None:
        return ""
    if ran_with >= policy.cap:
        return (f"; on_oom={policy.on_oom!r}: escalation stopped at the cap of {format_bytes(policy.cap)} "
                f"({policy.cap_source}); raise `memory` or the cap")
    nxt = format_bytes(policy.next_request(ran_with))
    if retries is not None and try_number > retries:
        return f"; on_oom={policy.on_oom!r} would ask for {nxt}, but the task has no retries left (retries={retries})"
    return f"; on_oom={policy.on_oom!r}: the next try asks for {nxt} (cap {format_bytes(policy.cap)})"
