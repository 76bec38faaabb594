"""A second, private Docker engine for tests that kill one (tests/test_faults.py).

The shared engine at /var/run/docker.sock serves the registry's pushes, moto's Batch jobs and
every other test: killing it would fail them. This one has its own socket, data root, exec
root (where it starts its own containerd) and pid file, all under one temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class PrivateEngine:
    def __init__(self) -> None:
        # Short: the unix socket path (and containerd's under exec/) must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="ai-dockerd-", dir="/tmp"))
        self.host = f"unix://{self.root}/docker.sock"
        self.log = self.root / "dockerd.log"

    def start(self) -> None:
        # A dockerd killed with -9 leaves its pid files. A new dockerd refuses to start over its
        # own, and takes containerd's for a live containerd when that pid is still taken (here
        # by the killed one's zombie, when the machine's init does not reap it), then times out.
        for pidfile in self._pidfiles():
            pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            subprocess.Popen(
                ["dockerd", "-H", self.host, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "--pidfile", str(self.root / "docker.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while not self.answers():
            assert time.monotonic() < deadline, f"the private dockerd did not start: {self.log.read_text()[-3000:]}"
            time.sleep(0.5)

    def answers(self) -> bool:
        return self.docker("info", check=False).returncode == 0

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, check=check, timeout=120)

    def containers(self, label: str) -> list[str]:
        """Every container (running or not) with `label` ("key=value")."""
        return self.docker("ps", "-aq", "--filter", f"label={label}").stdout.split()

    def daemon_pids(self) -> list[int]:
        """dockerd and the containerd it started (not the shims: they keep containers running)."""
        pids = []
        for pidfile in self._pidfiles():
            if pidfile.exists() and pidfile.read_text().strip():
                pids.append(int(pidfile.read_text()))
        return pids

    def _pidfiles(self) -> tuple[Path, Path]:
        return self.root / "docker.pid", self.root / "exec" / "containerd" / "containerd.pid"

    def kill_daemons(self) -> None:
        """What a crash does: dockerd and its containerd gone at once, no clean-up."""
        for pid in self.daemon_pids():
            _signal(pid, signal.SIGKILL)

    def processes(self) -> list[int]:
        """Processes whose command line names this engine's folder (dockerd, containerd, shims)."""
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if str(self.root).encode() in (proc / "cmdline").read_bytes():
                        found.append(int(proc.name))
                except OSError:
                    continue  # ended meanwhile
        return found

    def teardown(self) -> None:
        if self.answers():  # containers first, while the engine can still stop them
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        for pid in self.daemon_pids():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.processes():
            _signal(pid, signal.SIGKILL)
        self._unmount()
        shutil.rmtree(self.root, ignore_errors=True)

    def _unmount(self) -> None:
        """Overlay and shm mounts under the folder (deepest first), or rmtree fails on them."""
        prefix = f"{self.root}/"
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
