"""Cached virtual environments for the local kind, built with uv.

One directory per environment hash under the cache dir. A ready environment has a marker
file, written last; checking it is the whole warm path. Builders of the same hash take an
exclusive file lock, so concurrent tasks build once and never see a half-built tree; a
directory without the marker (a build that died) is removed and rebuilt under the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from airflow_infra.envbuild import RECIPE_VERSION, runtime_requirements, uv_binary
from airflow_infra.errors import InfraEnvironmentError
from airflow_infra.spec import Environment

READY = ".airflow-infra-ready"


def env_key(environment: Environment, requirements_text: str | None) -> str:
    extra = {"recipe": RECIPE_VERSION, "runtime": runtime_requirements(), "kind": "venv"}
    return environment.build_hash(requirements_text, extra)[:24]


def _run(cmd: list[str], log: Callable[[str], None]) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log(line)
    return proc.wait(), "\n".join(lines[-30:])


def ensure_env(
    environment: Environment,
    cache_dir: Path,
    *,
    requirements_text: str | None,
    requirements_path: Path | None,
    log: Callable[[str], None],
) -> tuple[Path, bool]:
    """Return (python executable, whether it was built now) for a ready environment."""
    key = env_key(environment, requirements_text)
    root = cache_dir / key
    python = root / "bin" / "python"
    if (root / READY).exists():
        return python, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / READY).exists():  # another task built it while we waited
            return python, False
        if root.exists():
            log(f"removing an unfinished environment at {root}")
            shutil.rmtree(root)
        started = time.monotonic()
        try:
            _build(environment, root, requirements_path, log)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        manifest = {"key": key, "environment": environment.model_dump(mode="json", exclude={"env"}), "requirements": requirements_text}
        (root / "airflow-infra-env.json").write_text(json.dumps(manifest, indent=1))
        (root / READY).write_text(f"{time.time()}\n")
        log(f"environment {key} built in {time.monotonic() - started:.1f}s")
    return python, True


def _build(environment: Environment, root: Path, requirements_path: Path | None, log: Callable[[str], None]) -> None:
    uv = uv_binary()
    # The worker's own interpreter: code is shipped as bytecode for exactly this version.
    code, tail = _run([uv, "venv", "--quiet", "--python", sys.executable, str(root)], log)
    if code != 0:
        raise InfraEnvironmentError(f"`uv venv` failed (exit {code}):\n{tail}")
    cmd = [uv, "pip", "install", "--python", str(root / "bin" / "python"), *runtime_requirements(), *environment.packages]
    if requirements_path is not None:
        cmd += ["-r", str(requirements_path)]
    wanted = [*environment.packages, *([f"-r {requirements_path}"] if requirements_path else [])]
    log("installing " + (", ".join(wanted) if wanted else "the runtime only"))
    code, tail = _run(cmd, log)
    if code != 0:
        raise InfraEnvironmentError(f"`uv pip install` failed (exit {code}); its last lines:\n{tail}")


def child_environ(declared: dict[str, str]) -> dict[str, str]:
    """The worker's environment minus Airflow's own settings and Python path, plus the declared variables.

    Minus the worker's AWS variables too: they are the worker's credentials, and a call gets
    AWS credentials only from an `aws` connection it declares (or its env=). The call does
    not need them for an S3 artifact store: the local kind stages the call's files through
    the worker (targets/staging.py), and the runtime reads and writes local paths only."""
    drop_prefixes = ("AIRFLOW", "_AIRFLOW", "PYTHON", "VIRTUAL_ENV", "UV_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.update(declared)
    env["PYTHONUNBUFFERED"] = "1"
    return env
