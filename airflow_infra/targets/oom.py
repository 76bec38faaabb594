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


def out_of_memory(limit: int | None, evidence: str) -> str:
    """`limit`: the memory limit the call ran under, in bytes (None: it had none, so what ran
    short was its machine); `evidence`: who reported the kill, in their own words."""
    if limit is None:
        return (f"out of memory: the task was killed with no memory limit of its own ({evidence}), so its machine "
                "ran short; declare `memory` (or a larger one) so it runs where that much is free")
    return f"out of memory: the task hit its memory limit of {format_bytes(limit)} and was killed ({evidence}); raise `memory`"
