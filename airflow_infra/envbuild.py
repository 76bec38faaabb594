"""What every built environment is made with, a local venv or an image alike: uv, the
runtime's own requirements, and the recipe version that invalidates old builds."""

from __future__ import annotations

import shutil

from airflow_infra.errors import InfraEnvironmentError

# Bump when the layout of a built environment (venv or image) changes, so old ones are not reused.
RECIPE_VERSION = "1"


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise InfraEnvironmentError("uv is not installed: `pip install uv` next to Airflow") from None
        return found


def runtime_requirements() -> list[str]:
    """What the runtime itself needs inside every environment (pinned to the worker's version)."""
    import cloudpickle

    return [f"cloudpickle=={cloudpickle.__version__}"]
