"""Test set-up: one throwaway AIRFLOW_HOME per session, set before Airflow is imported.

Integration tests run the real `airflow dags test` in a subprocess against a SQLite DB in
that home, with the examples and tests/dags copied into its dags folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.dagrun import REPO

HOME = Path(tempfile.mkdtemp(prefix="airflow-infra-tests-"))
DAGS = HOME / "dags"

os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
)
os.environ.pop("AIRFLOW_INFRA_TARGET", None)

DAGS.mkdir(parents=True)
for source in [*(REPO / "dags_examples").glob("*.py"), *(REPO / "tests" / "dags").iterdir()]:
    if source.name != "__pycache__":
        (shutil.copytree if source.is_dir() else shutil.copy)(source, DAGS / source.name)

from tests.dagrun import DagRunner  # noqa: E402  (needs the environment above)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, text=True, timeout=600
    )
    return HOME


@pytest.fixture(scope="session")
def dags(airflow_db: Path) -> DagRunner:
    return DagRunner(HOME)


@pytest.fixture
def infra_yaml():
    """Write $AIRFLOW_HOME/infra.yaml for one test; removed afterwards."""
    path = HOME / "infra.yaml"

    def write(text: str) -> Path:
        path.write_text(text)
        return path

    yield write
    path.unlink(missing_ok=True)


def pytest_sessionfinish(session, exitstatus):
    # The home holds built environments (hundreds of MB); keep it only when asked to.
    if not os.environ.get("AIRFLOW_INFRA_KEEP_TEST_HOME"):
        shutil.rmtree(HOME, ignore_errors=True)
