"""Installing an environment's distributions on the build host, one set of files per dist.

1. `resolve`: uv resolves the requirements to exact pins (with the hashes the index lists
   for each release), on the host's uv/pip configuration, like the local target's venvs.
2. `install`: only the pins whose layer is not cached yet are installed (`--no-deps`: the
   resolution already decided the set) into a staging venv made with an interpreter of the
   image's Python version, hard-linked from uv's cache (nothing here writes to a staged
   file: rewrites stay in memory), so the staging venv costs neither a copy nor, when it is
   removed, the freeing of its blocks.
3. Each installed distribution's files are read from its RECORD and mapped to their FINAL
   paths under the image's venv: console scripts get the final interpreter in their
   shebang (and their RECORD lines the new hash), and credentials in a direct URL are
   removed.
4. `compiled`: modules are byte-compiled in memory, by a process pool of the image's
   Python, with the final path as their file name (tracebacks show image paths) and as
   unchecked-hash `.pyc` (valid whatever the files' mtimes are); each distribution is handed
   back as soon as its modules are done, so its layer is written while the rest compile.
   Test suites shipped inside packages (`tests/`, `test/` directories) are not compiled:
   tasks do not import them, and they are most of the modules of numpy, pandas, scipy
   (numpy + pandas: 1400 of their 1970); imported anyway, they compile at import as in any image.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import pickle
import posixpath
import re
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from airflow_infra.envbuild import uv_binary
from airflow_infra.errors import InfraEnvironmentError
from airflow_infra.images.daemonless.layers import Entry
from airflow_infra.images.daemonless.timing import Stopwatch
from airflow_infra.images.recipe import VENV

Log = Callable[[str], None]
# user:password@ in a URL (a bare user@, as in git@host, is no secret)
_USERINFO = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@\"':]+:[^/\s@\"']*@")
_PIN_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)")
# Directories of a package's own test suite, whose modules are not byte-compiled.
TEST_DIRS = frozenset({"tests", "test"})


@dataclass(frozen=True)
class Pin:
    line: str  # as the resolver wrote it: "name==1.2" or "name @ url"
    name: str  # canonical distribution name
    hashes: tuple[str, ...]  # the index's hashes of the release's files ("sha256:..."), sorted

    def requirement(self) -> str:
        return " ".join([self.line, *(f"--hash={h}" for h in self.hashes)])


@dataclass
class Dist:
    """One installed distribution: its files at their final paths, ready to become a layer."""

    name: str
    entries: list[Entry]
    unpacked: int
    # (source on the host, final .py path, final .pyc path) per module to byte-compile
    compile: list[tuple[str, str, str]]


def site_packages(python: str) -> str:
    return f"{VENV}/lib/python{python}/site-packages"


def interpreter(python: str) -> str:
    """An interpreter of the image's major.minor on this host: this one, else what uv finds."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == python:
        return sys.executable
    found = subprocess.run([uv_binary(), "python", "find", python], capture_output=True, text=True)
    if found.returncode != 0:
        raise InfraEnvironmentError(
            f"the daemonless builder needs a Python {python} interpreter on this host to install and "
            f"byte-compile for the image (`uv python install {python}` provides one): {found.stderr.strip()}"
        )
    return found.stdout.strip()


def resolve(requirements: str, python_exe: str, log: Log) -> list[Pin]:
    with tempfile.TemporaryDirectory(prefix="airflow-infra-resolve-") as tmp:
        path = Path(tmp) / "requirements.in"
        path.write_text(requirements)
        cmd = [uv_binary(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--generate-hashes",
               "--python", python_exe, str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise InfraEnvironmentError(f"resolving the environment failed (uv pip compile):\n{done.stderr.strip()[-3000:]}")
    pins = []
    for logical in done.stdout.replace("\\\n", " ").splitlines():
        logical = logical.strip()
        if not logical or logical.startswith("#"):
            continue
        parts = logical.split(" --hash=")
        match = _PIN_NAME.match(parts[0])
        if not match:
            raise InfraEnvironmentError(f"uv pip compile wrote a line this builder does not understand: {parts[0]!r}")
        pins.append(Pin(parts[0].strip(), canonicalize_name(match.group(1)), tuple(sorted(h.strip() for h in parts[1:]))))
    log(f"resolved {len(pins)} distributions")
    return pins


def install(pins: list[Pin], python: str, python_exe: str, staging: Path, log: Log, watch: Stopwatch) -> dict[str, Dist]:
    """Install `pins` into a venv under `staging`; return their files (modules not compiled
    yet: see `compiled`) by canonical name."""
    uv = uv_binary()
    venv = staging / "venv"
    with watch.phase("install"):
        _run([uv, "venv", "--quiet", "--python", python_exe, str(venv)], "creating the staging venv")
        pinned = staging / "pins.txt"
        pinned.write_text("".join(pin.requirement() + "\n" for pin in pins))
        # (uv copies instead where its cache is on another file system)
        _run([uv, "pip", "install", "--quiet", "--no-deps", "--link-mode", "hardlink", "--python", str(venv / "bin" / "python"),
              "-r", str(pinned)], "installing the packages (uv pip install)")
    site = venv / "lib" / f"python{python}" / "site-packages"
    with watch.phase("collect"):
        dists = {dist.name: dist for dist in (_collect(info, site, venv, python) for info in sorted(site.glob("*.dist-info")))}
    missing = {pin.name for pin in pins} - set(dists)
    if missing:
        raise InfraEnvironmentError(f"uv installed no RECORD for {sorted(missing)}: cannot tell their files apart")
    log(f"installed {len(dists)} distributions ({sum(d.unpacked for d in dists.values()) / 2**20:.1f} MiB)")
    return dists


def _collect(info: Path, site: Path, venv: Path, python: str) -> Dist:
    name = canonicalize_name(info.name[: -len(".dist-info")].rsplit("-", 1)[0])
    final_site = site_packages(python)
    record_path = info / "RECORD"
    if not record_path.exists():
        raise InfraEnvironmentError(f"{info.name} has no RECORD: its files cannot be told apart")
    rows = list(csv.reader(io.StringIO(record_path.read_text())))
    stage_root = str(venv).encode()
    entries: list[Entry] = []
    new_rows = []
    compile_jobs: list[tuple[str, str, str]] = []
    unpacked = 0
    record_rel = posixpath.relpath(str(record_path), str(site))
    for row in rows:
        if not row:
            continue
        rel = row[0]
        final = posixpath.normpath(posixpath.join(final_site, rel))
        if not (final + "/").startswith(VENV + "/"):
            raise InfraEnvironmentError(f"{info.name} installs {rel!r}, outside the venv: refused")
        source = Path(posixpath.normpath(os.path.join(site, rel)))
        if rel == record_rel:
            continue  # written below, with the rows it ends up with
        if not source.is_file():
            continue  # RECORD lists it, uv did not write it (e.g. a pyc of another interpreter)
        data = source.read_bytes() if _rewritable(source, info) else None
        if data is not None:
            data = _final_text(data, stage_root, source, info)
            row = [rel, "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode(), str(len(data))]
        executable = bool(source.stat().st_mode & 0o100)
        entries.append(Entry(final, source=None if data is not None else source, data=data, executable=executable))
        unpacked += len(data) if data is not None else source.stat().st_size
        new_rows.append(row)
        if final.endswith(".py") and final.startswith(final_site + "/") and not TEST_DIRS.intersection(rel.split("/")[:-1]):
            compile_jobs.append((str(source), final, _cache_file(final, python)))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([*new_rows, [record_rel, "", ""]])
    record = out.getvalue().encode()
    entries.append(Entry(posixpath.join(final_site, record_rel), data=record))
    return Dist(name, entries, unpacked + len(record), compile_jobs)


def _cache_file(py: str, python: str) -> str:
    head, tail = posixpath.split(py)
    return posixpath.join(head, "__pycache__", f"{tail[:-3]}.cpython-{python.replace('.', '')}.pyc")


def _rewritable(source: Path, info: Path) -> bool:
    """Small text files that may hold the staging path or a URL: scripts, .pth, dist-info files."""
    if source.parent == info:
        return True
    if source.suffix == ".pth" or "/bin/" in str(source):
        return source.stat().st_size < 1 << 20
    return False


def _final_text(data: bytes, stage_root: bytes, source: Path, info: Path) -> bytes:
    data = data.replace(stage_root, VENV.encode())
    if source.name == "direct_url.json":
        direct = json.loads(data)
        parts = urllib.parse.urlsplit(direct.get("url", ""))
        if parts.username or parts.password:
            direct["url"] = urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
        data = json.dumps(direct, sort_keys=True).encode()
    if _USERINFO.search(data):
        raise InfraEnvironmentError(
            f"{info.name}/{source.name} holds a URL with credentials; refusing to put it in an image layer"
        )
    return data


# Run by the image's Python (which may not be this one): stdlib only. A .pyc as PEP 552 lays
# it out, unchecked-hash: magic, flags 0b01, the source's hash, the marshalled code; the
# code's file name is the final path. One pickled (index, [pyc or None]) per distribution,
# in order, as soon as its last module is done.
_COMPILE = r"""
import importlib.util, marshal, multiprocessing, pickle, sys
from concurrent.futures import ProcessPoolExecutor

def one(job):
    source_path, final_path = job
    with open(source_path, "rb") as f:
        source = f.read()
    try:
        code = compile(source, final_path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None  # what does not compile is left as source, as installers do
    return importlib.util.MAGIC_NUMBER + b"\x01\0\0\0" + importlib.util.source_hash(source) + marshal.dumps(code)

dists = pickle.load(sys.stdin.buffer)
out = sys.stdout.buffer
with ProcessPoolExecutor(mp_context=multiprocessing.get_context("fork")) as pool:
    results = pool.map(one, [job for jobs in dists for job in jobs], chunksize=16)
    for index, jobs in enumerate(dists):
        pickle.dump((index, [next(results) for _ in jobs]), out)
        out.flush()
"""


def compiled(python_exe: str, dists: list[Dist]) -> Iterator[Dist]:
    """Each of `dists`, in that order, once its modules' .pyc are among its entries."""
    done = 0
    with tempfile.TemporaryFile() as errors:
        # Its own process group: a caller giving up early stops the pool's workers too.
        child = subprocess.Popen([python_exe, "-c", _COMPILE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                 start_new_session=True)
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(pickle.dumps([[(source, final_py) for source, final_py, _ in dist.compile] for dist in dists], protocol=4))
            child.stdin.close()
            while done < len(dists):
                try:
                    index, pycs = pickle.load(child.stdout)
                except EOFError:
                    break
                dist = dists[index]
                dist.entries += [Entry(final_pyc, data=pyc) for (_, _, final_pyc), pyc in zip(dist.compile, pycs) if pyc]
                done += 1
                yield dist
            child.wait()
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if child.returncode != 0 or done < len(dists):
            errors.seek(0)
            raise InfraEnvironmentError(
                f"byte-compiling failed (exit {child.returncode}):\n{errors.read().decode(errors='replace').strip()[-2000:]}"
            )


def _run(cmd: list[str], doing: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise InfraEnvironmentError(f"{doing} failed (exit {done.returncode}):\n{done.stderr.strip()[-3000:]}")
