"""Why a pod ended without the call's outcome, in the cluster's own words.

Read from the pod and its events as they were when the task failed (see
podspec._observed_operator_class), never guessed from an exit code: on a cluster, 137 comes
from an OOM kill, an eviction, a preemption or a deletion alike, and only the container's
`OOMKilled` reason means out of memory.
"""

from __future__ import annotations

from typing import Any

from airflow_infra.targets.oom import out_of_memory

PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def _containers(status: Any) -> list[Any]:
    return [*(getattr(status, "init_container_statuses", None) or []), *(getattr(status, "container_statuses", None) or [])]


def _eviction_advice(message: str) -> str:
    """What to change, by the kubelet's words for why it evicted (pkg/kubelet/eviction)."""
    if "exceeds the total limit of containers" in message or "exceeded its local ephemeral storage limit" in message:
        return ("; it wrote more to its local disk (ephemeral-storage) than its `disk` limit allows: "
                "raise `disk` or write less to the local disk")
    if "EmptyDir volume" in message:
        return "; an emptyDir volume went over its sizeLimit: raise it in the target's pod template or write less there"
    if "low on resource: ephemeral-storage" in message:
        return ("; its node ran short of local disk (ephemeral-storage): declare `disk` so the pod is "
                "scheduled where that much is free")
    if "low on resource: memory" in message:
        return "; its node ran short of memory: declare `memory` (or a larger one) so the pod is scheduled where that much is free"
    return ""


def _failed_init(status: Any) -> Any:
    """The init container that ended the pod (restartPolicy Never: the first to exit non-zero)."""
    for container in getattr(status, "init_container_statuses", None) or []:
        terminated = container.state.terminated if container.state else None
        if terminated is not None and terminated.exit_code:
            return container
    return None


def _latest_warning(events: tuple[Any, ...], *reasons: str) -> str | None:
    for event in reversed(events):
        if getattr(event, "type", None) == "Warning" and getattr(event, "reason", None) in reasons:
            return event.message
    return None


def explain_pod(
    pod: Any, events: tuple[Any, ...], *, name: str, error_text: str, memory_limit: int | None,
    timeout: float | None, startup_timeout: int, reference: str,
) -> str:
    """One sentence (and what to change) for the pod's last state; `pod` may be None when
    the API no longer had it."""
    status = getattr(pod, "status", None)
    meta = getattr(pod, "metadata", None)
    if status is not None and status.reason == "Evicted":
        message = (status.message or "no reason given").strip()
        return f"evicted: pod {name} was evicted by its node: {message}{_eviction_advice(message)}"
    if status is not None and status.reason == "DeadlineExceeded":
        return (f"deadline exceeded: pod {name} ran longer than timeout={timeout or 0:g}s and was stopped; "
                "raise `timeout` or make the task faster")
    containers = _containers(status)
    waiting = [c.state.waiting for c in containers if c.state and c.state.waiting]
    pulling = next((w for w in waiting if w.reason in PULL_FAILURES), None)
    if pulling is not None or "Image cannot be pulled" in error_text:
        detail = (f"{pulling.reason}: {pulling.message}" if pulling is not None and pulling.message
                  else _latest_warning(events, "Failed") or error_text.strip())
        return (
            f"image pull failed: the cluster could not pull {reference or 'the image'} ({detail}); "
            "check that it was pushed (`airflow-infra build DAG_FILE`), that the nodes reach the registry "
            "(`pull_registry` in infra.yaml) and that `image_pull_secrets` grant access"
        )
    config = next((w for w in waiting if w.reason in CONFIG_FAILURES), None)
    if config is not None:
        return (f"container config error: pod {name} could not start its container ({config.reason}: "
                f"{config.message or 'no message'}); check the target's security_context, pod template and image")
    unscheduled = next((c for c in (getattr(status, "conditions", None) or [])
                        if c.type == "PodScheduled" and c.status == "False"), None)
    if unscheduled is not None:
        reason = unscheduled.message or _latest_warning(events, "FailedScheduling") or unscheduled.reason or "no reason given"
        return (f"unschedulable: no node could take pod {name} within {startup_timeout}s: {reason}; "
                "ask for less (cpu, memory, gpu), fix the target's node_selector or tolerations, "
                "or add nodes that have it")
    if meta is not None and getattr(meta, "deletion_timestamp", None) is not None:
        return (f"pod {name} was deleted while it ran (by a person, a controller or node drain); "
                "the call did not finish")
    init = _failed_init(status)
    if init is not None:
        ended = init.state.terminated
        why = "out of memory" if ended.reason == "OOMKilled" else ended.message or ended.reason or "no reason given"
        return (f"init container {init.name} of pod {name} failed: exit code {ended.exit_code} ({why}), so the pod's "
                "containers never started (Init:Error); check the init containers of the target's pod template")
    failed = next((c for c in containers if c.state and c.state.terminated and c.state.terminated.exit_code), None)
    terminated = failed.state.terminated if failed is not None else None
    which = f"container {failed.name} of pod {name}" if failed is not None and failed.name != "base" else f"pod {name}"
    if terminated is not None and terminated.reason == "OOMKilled" and which != f"pod {name}":
        return f"out of memory: {which} was killed (exit 137); raise its memory limit in the target's pod template"
    if terminated is not None and terminated.reason == "OOMKilled":
        return out_of_memory(memory_limit, f"pod {name}: its container's terminated reason is OOMKilled")
    if terminated is not None:
        signal = f", signal {terminated.exit_code - 128}" if terminated.exit_code > 128 else ""
        why = terminated.message or terminated.reason or "no reason given"
        return f"{which} failed: exit code {terminated.exit_code}{signal} ({why})"
    if "took too long" in error_text:
        last = waiting[0] if waiting else None
        state = f" (its container was still {last.reason}{': ' + last.message if last.message else ''})" if last else ""
        return (f"pod {name} did not start within {startup_timeout}s{state}; "
                "raise `startup_timeout` or check the cluster's capacity")
    if pod is None:
        return f"pod {name} failed and the cluster no longer has it: {error_text.splitlines()[0] if error_text else 'no detail'}"
    return f"pod {name} failed: {error_text.splitlines()[0] if error_text else status and status.phase}"
