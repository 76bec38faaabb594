"""The installed distribution registers as an Airflow provider, with its decorator and config section."""

from __future__ import annotations

import subprocess
import sys

import pytest


def airflow(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.integration
def test_providers_list_shows_airflow_infra():
    assert "airflow-infra" in airflow("providers", "list")


@pytest.mark.integration
def test_config_section_is_declared():
    out = airflow("config", "list", "--section", "infra", "--include-descriptions")
    assert "[infra]" in out and "config_file" in out and "env_cache_dir" in out


def test_provider_info_matches_distribution():
    from importlib.metadata import distribution

    from airflow_infra.provider_info import get_provider_info

    info = get_provider_info()
    dist = distribution("airflow-infra")
    assert info["package-name"] == dist.metadata["Name"]
    [entry] = [e for e in dist.entry_points if e.group == "apache_airflow_provider"]
    assert entry.load() is get_provider_info
    assert info["task-decorators"] == [{"name": "infra", "class-name": "airflow_infra.decorator.infra_task"}]
