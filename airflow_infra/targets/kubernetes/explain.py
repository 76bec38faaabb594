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
        message = status.message or "no reason given"
        disk = "ephemeral-storage" in message or "ephemeral local storage" in message  # the two ways kubelets say it
        return (f"evicted: pod {name} was evicted by its node: {message}"
                + ("; raise `disk` (its local disk limit) or write less to the local disk" if disk else ""))
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
    terminated = next((c.state.terminated for c in containers if c.state and c.state.terminated
                       and c.state.terminated.exit_code), None)
    if terminated is not None and terminated.reason == "OOMKilled":
        return out_of_memory(memory_limit, f"pod {name}: its container's terminated reason is OOMKilled")
    if terminated is not None:
        signal = f", signal {terminated.exit_code - 128}" if terminated.exit_code > 128 else ""
        why = terminated.message or terminated.reason or "no reason given"
        return f"pod {name} failed: exit code {terminated.exit_code}{signal} ({why})"
    if "took too long" in error_text:
        last = waiting[0] if waiting else None
        state = f" (its container was still {last.reason}{': ' + last.message if last.message else ''})" if last else ""
        return (f"pod {name} did not start within {startup_timeout}s{state}; "
                "raise `startup_timeout` or check the cluster's capacity")
    if pod is None:
        return f"pod {name} failed and the cluster no longer has it: {error_text.splitlines()[0] if error_text else 'no detail'}"
    return f"pod {name} failed: {error_text.splitlines()[0] if error_text else status and status.phase}"
