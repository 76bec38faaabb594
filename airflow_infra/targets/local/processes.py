"""Finding a process again after the worker that started it died: a pid alone can be reused,
so a local call is known by its pid, its start time and the boot it started in (all from
/proc), and a later try follows or kills it only while all three still match."""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def boot_id() -> str:
    """This boot of this machine: a pid and start time mean nothing in another one."""
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat's 22nd field); None if gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])  # field 22 overall: the 20th after the name and the state


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start: int
    boot: str

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start, boot_id())

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> ProcessRef | None:
        """From a stored handle's details; None unless they are well-formed (the task state
        store they come from is writable through Airflow's REST API)."""
        pid, start, boot = details.get("pid"), details.get("start"), details.get("boot")
        if not (type(pid) is int and 1 < pid < 1 << 22 and type(start) is int and start >= 0 and isinstance(boot, str)):
            return None
        return cls(pid, start, boot)

    def as_details(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    @property
    def alive(self) -> bool:
        """Whether the very process still runs (not a zombie, not another one with its pid)."""
        if self.boot != boot_id() or start_time(self.pid) != self.start:
            return False
        with suppress(OSError):
            stat = (_PROC / str(self.pid) / "stat").read_text()
            return stat[stat.rindex(")") + 2] != "Z"
        return False

    def cwd(self) -> Path | None:
        try:
            return Path(os.readlink(_PROC / str(self.pid) / "cwd"))
        except OSError:
            return None

    def kill_group(self) -> None:
        """SIGKILL its process group (it leads one: the runtime server's children call setsid),
        only while it is still the very process."""
        if self.alive:
            with suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
