"""What the `airflow dags test` benchmarks share: a throw-away Airflow home with their DAG
files, one timed `dags test`, and each task instance's span from its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\S+)(?: map_index=(-?\d+))?")
AIRFLOW = [sys.executable, "-m", "airflow"]


def bench_home(prefix: str, dag_files: dict[str, str], **extra_env: str) -> tuple[Path, dict[str, str]]:
    """A fresh AIRFLOW_HOME holding `dag_files` ({file name: source}), its DB migrated; and the environment to run in it."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    dags = home / "dags"
    dags.mkdir()
    for name, source in dag_files.items():
        (dags / name).write_text(source)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **extra_env,
    }
    env.pop("AIRFLOW_INFRA_TARGET", None)
    subprocess.run([*AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return home, env


def dags_test(env: dict[str, str], dag_id: str, expected_spans: int) -> tuple[float, list[float]]:
    """Wall seconds of one `airflow dags test`, and its task instances' spans (exits if it failed)."""
    started = time.perf_counter()
    proc = subprocess.run([*AIRFLOW, "dags", "test", dag_id], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or "state=success" not in output:
        sys.exit(f"{dag_id} failed:\n{output[-3000:]}")
    found = spans(output)
    if len(found) != expected_spans:
        sys.exit(f"{dag_id}: expected {expected_spans} task instance spans in the log, found {len(found)}")
    return elapsed, found


def spans(output: str) -> list[float]:
    """Seconds from each task instance's "[DAG TEST] starting" line to its "end task" line."""
    started: dict[tuple[str, str | None], datetime] = {}
    found = []
    for line in output.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        key = (match.group(3), match.group(4))
        if match.group(2) == "starting":
            started[key] = stamp
        elif key in started:
            found.append((stamp - started.pop(key)).total_seconds())
    return found


def interleaved(names: list[str], runs: int, env: dict[str, str], dag_id: str, expected_spans: int) -> tuple[dict, dict]:
    """One warm-up run of each DAG, then `runs` rounds, variants alternating so drift hits all alike.
    Returns ({name: [wall seconds]}, {name: [spans]}); `dag_id` is a format string of `name`."""
    for name in names:
        dags_test(env, dag_id.format(name=name), expected_spans)
    totals: dict[str, list[float]] = {name: [] for name in names}
    all_spans: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            total, found = dags_test(env, dag_id.format(name=name), expected_spans)
            totals[name].append(total)
            all_spans[name].extend(found)
    return totals, all_spans
