"""Measured use next to what a task asked for, with a hint when they are far apart."""

from __future__ import annotations

from typing import Any

from airflow_infra.quantities import format_bytes

# Below these, a generous request costs little: no hint.
_MIN_MEMORY_FOR_HINT = 256 << 20
_MIN_CPU_FOR_HINT = 1.0


def _round_up_memory(n: int) -> str:
    """A request with headroom: 1.5x the peak, rounded up to a power-of-two MiB count."""
    mib = max(64, int(n * 1.5) >> 20)
    return format_bytes(1 << (mib - 1).bit_length() << 20)


def advice(requested: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """Hints comparing requested resources (normalised: cores, bytes) with measured metrics."""
    hints = []
    peak = metrics.get("peak_memory_bytes")
    memory = requested.get("memory")
    if peak and memory:
        if peak > memory:
            hints.append(
                f"memory: peak {format_bytes(peak)} is above the request {format_bytes(memory)}; "
                f"where memory is a limit the task would be killed: request memory='{_round_up_memory(peak)}'"
            )
        elif memory >= _MIN_MEMORY_FOR_HINT and peak * 4 < memory:
            hints.append(
                f"memory: peak {format_bytes(peak)} is far below the request {format_bytes(memory)}; "
                f"memory='{_round_up_memory(peak)}' would do"
            )
    cpu, wall, cpu_seconds = requested.get("cpu"), metrics.get("wall_seconds"), metrics.get("cpu_seconds")
    if cpu and wall and cpu_seconds is not None and wall > 1.0:
        used = cpu_seconds / wall
        if cpu >= _MIN_CPU_FOR_HINT and used * 4 < cpu:
            hints.append(f"cpu: used {used:.2f} cores on average of the {cpu:g} requested; consider cpu={max(0.25, round(used * 1.5, 2)):g}")
        elif used > cpu * 1.5:
            hints.append(f"cpu: used {used:.2f} cores on average, more than the {cpu:g} requested")
    return hints


def summary(requested: dict[str, Any], metrics: dict[str, Any]) -> str:
    memory = requested.get("memory")
    wall = metrics.get("wall_seconds") or 0.0
    cores = (metrics.get("cpu_seconds") or 0.0) / wall if wall else 0.0
    return (
        f"peak memory {format_bytes(metrics.get('peak_memory_bytes'))} (requested {format_bytes(memory)}), "
        f"CPU {metrics.get('cpu_seconds', 0.0):.2f}s = {cores:.2f} cores (requested {requested.get('cpu') or '-'}), "
        f"wall {wall:.2f}s"
    )
