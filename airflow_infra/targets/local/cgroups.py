"""A cgroup per local call, so `memory` and `cpu` are limits the kernel enforces, as on
the docker, kubernetes and batch targets, instead of numbers compared afterwards.

The worker makes the call's cgroup before the call starts; the forked child joins it
first thing, before it loads any user code (runtime.serve writes its own pid into each
`cgroup.procs` the request names). When the call ends, whatever is still in the cgroup is
killed (also a process that left the call's process group with setsid) and the cgroup is
removed.

Both cgroup versions, detected at run time from /proc/self/mountinfo:
- v1 (these machines): one hierarchy per controller, `memory/` and `cpu/` (or `cpu,cpuacct/`).
  memory.limit_in_bytes (+ memory.memsw.limit_in_bytes, so swap cannot stretch the limit),
  cpu.cfs_quota_us / cpu.cfs_period_us; an OOM kill is counted in memory.oom_control
  `oom_kill` (older kernels: memory.failcnt, together with a SIGKILL).
- v2 (unified): memory.max, memory.swap.max = 0, memory.oom.group = 1 (an OOM kill ends
  the whole call, as a container's does), cpu.max; OOM kills are counted in memory.events.

The call's cgroup is made under the worker's own cgroup (from /proc/self/cgroup), or under
the local target's `cgroup_parent`. Where none can be made (no cgroup filesystem at
`cgroup_root`, no memory controller, no permission, v2's rule that a cgroup with processes
of its own cannot hand controllers to children), the call runs as before and the task log
says so in one line: `Unenforced.reason`.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "airflow-infra-call-"
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # the kernel's smallest quota


class Unenforced(Exception):
    """Limits cannot be enforced here; the message says why, in words an operator can act on."""


@dataclass(frozen=True)
class Mount:
    point: Path
    root: str  # the part of the hierarchy mounted there ("/" unless a container bind-mounted a sub-tree)
    version: int
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def cgroup_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup filesystems in /proc/self/mountinfo's text."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        controllers = frozenset(tail[2].split(",")) if version == 1 else frozenset()
        mounts.append(Mount(Path(_unescape(fields[4])), _unescape(fields[3]), version, controllers))
    return mounts


def own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """This process's cgroup per controller from /proc/self/cgroup's text; v2's under ""."""
    own = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _inside(mount: Mount, path: str) -> Path:
    """Where the hierarchy's `path` is under the mount point."""
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return mount.point / path.lstrip("/")


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:  # one write(2): cgroup files take a value per write
        fh.write(value)


def _counter(path: Path, key: str) -> int | None:
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class Hierarchies:
    """Where calls' cgroups are made: per controller ("memory", "cpu") a parent directory."""

    version: int
    parents: dict[str, Path]

    @property
    def description(self) -> str:
        places = sorted({str(p) for p in self.parents.values()})
        return f"cgroup v{self.version} under {', '.join(places)}"


def locate(root: Path, parent: str | None, *, mountinfo: str | None = None, proc_cgroup: str | None = None) -> Hierarchies:
    """Find the memory (and cpu) controllers mounted at or under `root`, and the parent
    cgroup calls' cgroups go in: `parent` (a path inside the hierarchy) or this process's own."""
    if mountinfo is None:
        mountinfo = _read(Path("/proc/self/mountinfo"))
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    root = Path(os.path.normpath(root))
    mounts = [m for m in cgroup_mounts(mountinfo) if m.point == root or root in m.point.parents]
    own = own_cgroups(proc_cgroup)
    unified = next((m for m in mounts if m.version == 2 and m.point == root), None)
    if unified is not None:
        path = parent or own.get("")
        if path is None:
            raise Unenforced(f"this process has no cgroup v2 membership (/proc/self/cgroup) to put calls under at {root}")
        return Hierarchies(2, {"memory": _inside(unified, path), "cpu": _inside(unified, path)})
    parents = {}
    for controller in ("memory", "cpu"):
        mount = next((m for m in mounts if m.version == 1 and controller in m.controllers), None)
        if mount is not None:
            path = parent or own.get(controller)
            if path is not None:
                parents[controller] = _inside(mount, path)
    if "memory" not in parents:
        found = ", ".join(f"{m.point} (cgroup v{m.version})" for m in mounts) or "none"
        raise Unenforced(f"no cgroup filesystem with the memory controller is mounted at {root} (cgroup mounts there: {found})")
    return Hierarchies(1, parents)


class CallCgroup:
    """The cgroup(s) of one call: one directory on v2, one per limited controller on v1."""

    def __init__(self, version: int, dirs: dict[str, Path]):
        self.version, self.dirs = version, dirs

    def as_details(self) -> dict[str, Any]:
        """For the call's stored handle: a later try releases the cgroup (reopen)."""
        return {"version": self.version, "dirs": {c: str(d) for c, d in self.dirs.items()}}

    @property
    def join_files(self) -> list[str]:
        """The `cgroup.procs` files the call's process writes its pid into before it runs anything."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    @property
    def memory_dir(self) -> Path | None:
        return self.dirs.get("memory")

    def oom_evidence(self, exit_code: int | None) -> str | None:
        """The kernel's word that it killed something in this call for memory (None: it did not)."""
        folder = self.memory_dir
        if folder is None:
            return None
        if self.version == 2:
            kills = _counter(folder / "memory.events", "oom_kill") or _counter(folder / "memory.events", "oom_group_kill")
            return f"the kernel's OOM killer, cgroup v2 memory.events oom_kill={kills}" if kills else None
        kills = _counter(folder / "memory.oom_control", "oom_kill")
        if kills is not None:
            return f"the kernel's OOM killer, cgroup v1 memory.oom_control oom_kill={kills}" if kills else None
        try:  # kernels before 4.13 have no oom_kill count: the limit was hit, and the call died of SIGKILL
            failures = int(_read(folder / "memory.failcnt"))
        except (OSError, ValueError):
            return None
        if failures and exit_code == -signal.SIGKILL:
            return f"killed by SIGKILL after its cgroup v1 memory limit was hit {failures} times (memory.failcnt)"
        return None

    def pids(self) -> set[int]:
        found = set()
        for folder in self.dirs.values():
            try:
                found |= {int(p) for p in _read(folder / "cgroup.procs").split()}
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL everything still in the call's cgroup (what the call started, wherever its group)."""
        for folder in self.dirs.values():
            if self.version == 2 and (folder / "cgroup.kill").exists():
                try:
                    _write(folder / "cgroup.kill", "1")
                    continue
                except OSError:
                    pass
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def remove(self, within: float = 5.0) -> list[str]:
        """Kill what is left and remove the directories; returns those that could not be removed."""
        until = time.monotonic() + within
        left = []
        for folder in self.dirs.values():
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > until:
                        left.append(f"{folder}: {exc.strerror}")
                        break
                    self.kill_all()  # processes still in it: they die, and leave it, within milliseconds
                    time.sleep(0.02)
        return left


def _enable_v2(parent: Path, controllers: list[str]) -> list[str]:
    """Hand `controllers` to the parent's children; returns those enabled (cpu is dropped
    where the parent does not have it: memory alone is still worth enforcing)."""
    available = _read(parent / "cgroup.controllers").split()
    if "cpu" in controllers and "cpu" not in available and "memory" in controllers:
        controllers = [c for c in controllers if c != "cpu"]
    missing = [c for c in controllers if c not in available]
    if missing:
        raise Unenforced(f"the {' and '.join(missing)} controller is not available in {parent} (cgroup.controllers: "
                         f"{' '.join(available) or 'none'}); delegate it to this cgroup or set the local target's cgroup_parent")
    enabled = _read(parent / "cgroup.subtree_control").split()
    wanted = [c for c in controllers if c not in enabled]
    if wanted:
        try:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise Unenforced(
                    f"{parent} has processes of its own, so cgroup v2 cannot give its children the "
                    f"{' and '.join(wanted)} controller; set the local target's cgroup_parent to a delegated cgroup "
                    "with no processes in it") from None
            raise
    return controllers


def create(hierarchies: Hierarchies, memory: int | None, cpu: float | None) -> CallCgroup:
    """Make one call's cgroup with these limits (bytes, cores). Raises Unenforced or OSError;
    nothing is left behind when it does."""
    name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    wanted = [c for c, v in (("memory", memory), ("cpu", cpu)) if v is not None]
    if hierarchies.version == 2:
        wanted = _enable_v2(hierarchies.parents["memory"], wanted)
        dirs = dict.fromkeys(wanted, hierarchies.parents["memory"] / name)
    else:
        # v1 without a cpu hierarchy: memory alone (for_call says so)
        dirs = {c: hierarchies.parents[c] / name for c in wanted if c in hierarchies.parents}
    if not dirs:
        raise Unenforced(f"no {' or '.join(wanted)} controller in {hierarchies.description}")
    made = CallCgroup(hierarchies.version, dirs)
    try:
        for folder in sorted(set(dirs.values())):
            folder.mkdir(parents=False)
        if memory is not None:
            _limit_memory(made, dirs["memory"], memory)
        if cpu is not None and "cpu" in dirs:
            quota = max(MIN_CFS_QUOTA_US, round(cpu * CFS_PERIOD_US))
            if made.version == 2:
                _write(dirs["cpu"] / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            else:
                _write(dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
    except BaseException:
        made.remove()
        raise
    return made


def _limit_memory(made: CallCgroup, folder: Path, memory: int) -> None:
    if made.version == 2:
        _write(folder / "memory.max", str(memory))
        for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (folder / optional).exists():
                _write(folder / optional, value)
        return
    _write(folder / "memory.limit_in_bytes", str(memory))
    if (folder / "memory.memsw.limit_in_bytes").exists():  # only with swap accounting; set after the memory limit
        _write(folder / "memory.memsw.limit_in_bytes", str(memory))


_NAME = re.compile(re.escape(PREFIX) + r"[0-9]{1,10}-[0-9a-f]{12}\Z")  # create()'s names


def reopen(root: str, parent: str | None, details: object) -> CallCgroup | None:
    """The cgroup a stored handle names (a later try follows the call in it, then removes
    it), if it is a call's cgroup directly under the parent calls' cgroups go in here; None
    otherwise. The handle comes from the task state store, which Airflow's REST API can
    write: nothing else is ever killed or removed through it."""
    try:
        hierarchies = locate(Path(root), parent)
    except (Unenforced, OSError):
        return None
    if not isinstance(details, dict) or details.get("version") != hierarchies.version or not isinstance(details.get("dirs"), dict):
        return None
    dirs = {}
    for controller, folder in details["dirs"].items():
        expected = hierarchies.parents.get(controller) if isinstance(controller, str) else None
        path = Path(folder) if isinstance(folder, str) else None
        if expected is None or path is None or path.parent != expected or not _NAME.match(path.name) or path.is_symlink():
            return None
        dirs[controller] = path
    return CallCgroup(hierarchies.version, dirs) if dirs else None


def sweep(hierarchies: Hierarchies) -> None:
    """Remove calls' cgroups that a worker which is no longer running left behind (killed
    between a call's start and its end): only empty ones, so nothing running is touched."""
    for folder in leftovers(hierarchies):
        pid = folder.name[len(PREFIX):].partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                folder.rmdir()  # EBUSY while anything is in it: then it is not stale
            except OSError:
                pass


def leftovers(hierarchies: Hierarchies, pid: int | None = None) -> list[Path]:
    """Calls' cgroups still present under the parents (of worker `pid` only, if given)."""
    prefix = PREFIX if pid is None else f"{PREFIX}{pid}-"
    return sorted({p for parent in set(hierarchies.parents.values()) if parent.is_dir()
                   for p in parent.iterdir() if p.name.startswith(prefix)})


def for_call(root: str, parent: str | None, memory: int | None, cpu: float | None, log) -> CallCgroup | None:
    """The call's cgroup with its declared limits, or None (no limits declared, or they cannot
    be enforced here). `log(level, line)` gets exactly one line either way, for the task log."""
    from airflow_infra.quantities import format_bytes

    if memory is None and cpu is None:
        return None
    declared = ", ".join(f for f in (memory is not None and f"memory={format_bytes(memory)}",
                                     cpu is not None and f"cpu={cpu:g}") if f)
    try:
        hierarchies = locate(Path(root), parent)
        sweep(hierarchies)
        made = create(hierarchies, memory, cpu)
    except (Unenforced, OSError) as exc:
        why = str(exc) if isinstance(exc, Unenforced) else f"{exc.filename or root}: {exc.strerror or exc}"
        log("warning", f"limits not enforced on the local target ({declared} are only compared with measured use "
                       f"afterwards): {why}")
        return None
    unenforced = " (cpu not enforced: no cpu controller here)" if cpu is not None and "cpu" not in made.dirs else ""
    log("info", f"limits enforced by {hierarchies.description}: {declared}{unenforced}; "
                f"the call's cgroup is {' and '.join(sorted({str(d) for d in made.dirs.values()}))}")
    return made
