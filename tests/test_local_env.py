"""Cached uv environments: built once, shared, concurrency-safe, conflicting pins side by side."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path

from airflow_infra import Environment
from airflow_infra.targets.local.venvs import READY, ensure_env, env_key


def _build(args: tuple[str, list[str]]) -> tuple[str, bool]:
    cache, packages = args
    python, built = ensure_env(Environment(packages=packages), Path(cache), requirements_text=None, requirements_path=None, log=lambda _: None)
    return str(python), built


def version_of(python: Path, module: str) -> str:
    return subprocess.run([str(python), "-c", f"import {module}; print({module}.__version__)"], capture_output=True, text=True, check=True).stdout.strip()


def test_build_once_then_reuse(tmp_path):
    logs: list[str] = []
    env = Environment(packages=["six==1.16.0"])
    python, built = ensure_env(env, tmp_path, requirements_text=None, requirements_path=None, log=logs.append)
    assert built and version_of(python, "six") == "1.16.0"
    assert version_of(python, "cloudpickle")  # the runtime's own dependency
    marker = (python.parent.parent / READY).stat().st_mtime
    again, built_again = ensure_env(Environment(packages=["SIX == 1.16.0"]), tmp_path, requirements_text=None, requirements_path=None, log=logs.append)
    assert again == python and not built_again
    assert (python.parent.parent / READY).stat().st_mtime == marker


def test_conflicting_pins_live_side_by_side(tmp_path):
    old, _ = _build((str(tmp_path), ["six==1.16.0"]))
    new, _ = _build((str(tmp_path), ["six==1.17.0"]))
    assert old != new
    assert version_of(Path(old), "six") == "1.16.0" and version_of(Path(new), "six") == "1.17.0"


def test_concurrent_builders_build_once(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_build, [(str(tmp_path), ["six==1.16.0"])] * 4)
    assert len({python for python, _ in results}) == 1
    assert sum(built for _, built in results) == 1
    assert version_of(Path(results[0][0]), "six") == "1.16.0"


def test_unfinished_build_is_replaced(tmp_path):
    env = Environment(packages=["six==1.16.0"])
    leftover = tmp_path / env_key(env, None)
    (leftover / "bin").mkdir(parents=True)
    (leftover / "bin" / "python").write_text("not a python")
    logs: list[str] = []
    python, built = ensure_env(env, tmp_path, requirements_text=None, requirements_path=None, log=logs.append)
    assert built and any("unfinished" in line for line in logs)
    assert version_of(python, "six") == "1.16.0"


def test_failed_build_leaves_nothing_behind(tmp_path):
    import pytest

    from airflow_infra.errors import InfraEnvironmentError

    env = Environment(packages=["this-package-does-not-exist-airflow-infra==0.0.1"])
    with pytest.raises(InfraEnvironmentError, match="uv pip install"):
        ensure_env(env, tmp_path, requirements_text=None, requirements_path=None, log=lambda _: None)
    assert not (tmp_path / env_key(env, None)).exists()
