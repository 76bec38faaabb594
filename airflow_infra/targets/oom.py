"""One sentence for an out-of-memory kill, the same on every target.

Each kind decides *whether* a call was killed for memory from what its kernel or platform
reports (a cgroup's `oom_kill` count, Docker's `State.OOMKilled`, Kubernetes' `OOMKilled`
reason, Batch's `OutOfMemoryError` reason), never from an exit code alone. How it is then
said is shared, so a user reads the same words wherever the task ran:

    out of memory: the task hit its memory limit of 64Mi and was killed (<evidence>); raise `memory`

Standard library and quantities only: the kubernetes explainer imports it.
"""

from __future__ import annotations

from airflow_infra.quantities import format_bytes


class OutOfMemory(str):
    """The sentence, marked as an out-of-memory kill: the pipeline tells it from other ends
    by this type (set only here, from what the platform reported), never by its words."""

    limit: int | None
    evidence: str

    def __add__(self, more: str) -> OutOfMemory:  # a kind appending detail (a log tail) keeps the mark
        said = OutOfMemory(str.__add__(self, more))
        said.limit, said.evidence = self.limit, self.evidence
        return said


def out_of_memory(limit: int | None, evidence: str) -> OutOfMemory:
    """`limit`: the memory limit the call ran under, in bytes (None: it had none, so what ran
    short was its machine); `evidence`: who reported the kill, in their own words."""
    said = OutOfMemory(_sentence(limit, evidence))
    said.limit, said.evidence = limit, evidence
    return said


def _sentence(limit: int | None, evidence: str) -> str:
    if limit is None:
        return (f"out of memory: the task was killed with no memory limit of its own ({evidence}), so its machine "
                "ran short; declare `memory` (or a larger one) so it runs where that much is free")
    return f"out of memory: the task hit its memory limit of {format_bytes(limit)} and was killed ({evidence}); raise `memory`"
