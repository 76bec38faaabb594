"""Benchmark (b): per-task overhead of the local target vs @task.virtualenv, under `airflow dags test`.

Three DAGs of --tasks (default 30) chained tasks that import the same package (six==1.16.0): plain @task
(the package from the worker's env), @task.virtualenv (uv, venv_cache_path, warm) and
@infra_task on the local target (warm environment cache). Each DAG runs once to warm
caches, then --runs times. `airflow dags test` has a fixed cost of its own (about 9 s,
varying by a few hundred ms run to run), so the comparison is of per-task time: each
task's span from "[DAG TEST] starting" to "end task" in the log, the median over all
timed runs, minus plain @task's. Total wall times are printed too.
Target: infra/virtualenv <= 0.7x.

    .venv/bin/python dev/bench/local_overhead.py [--runs 3] [--tasks 30]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_TASKS = 30  # --tasks
PACKAGE = "six==1.16.0"

TEMPLATE = '''
from airflow.sdk import dag, task
from airflow_infra import infra_task

CACHE = {cache!r}

@dag(schedule=None, dag_id="bench_{name}")
def build():
    @{decorator}
    def step(x=None):
        import six  # the same package in every variant
        return (x or 0) + 1

    value = None
    for i in range({n}):
        value = step.override(task_id=f"step_{{i}}")(value)

build()
'''

DECORATORS = {
    "plain": "task",
    "virtualenv": f'task.virtualenv(requirements=["{PACKAGE}"], venv_cache_path=CACHE, system_site_packages=False)',
    "infra": f'infra_task(packages=["{PACKAGE}"])',
}


_STAMP = re.compile(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\S+)")


def task_spans(output: str, n_tasks: int) -> list[float]:
    """Seconds from each task's "[DAG TEST] starting" line to its "end task" line."""
    from datetime import datetime

    started: dict[str, datetime] = {}
    spans = []
    for line in output.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        if match.group(2) == "starting":
            started[match.group(3)] = stamp
        elif match.group(3) in started:
            spans.append((stamp - started.pop(match.group(3))).total_seconds())
    if len(spans) != n_tasks:
        sys.exit(f"expected {n_tasks} task spans in the log, found {len(spans)}")
    return spans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=N_TASKS)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    dags = home / "dags"
    dags.mkdir()
    for name, decorator in DECORATORS.items():
        (dags / f"bench_{name}.py").write_text(
            TEMPLATE.format(cache=str(home / "venv-cache"), name=name, decorator=decorator, n=args.tasks)
        )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__STANDARD__VENV_INSTALL_METHOD": "uv",
        # @task.virtualenv finds uv on PATH: put this interpreter's scripts folder first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("AIRFLOW_INFRA_TARGET", None)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)

    def run(name: str) -> tuple[float, list[float]]:
        started = time.perf_counter()
        proc = subprocess.run([*airflow, "dags", "test", f"bench_{name}"], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or "state=success" not in output:
            sys.exit(f"bench_{name} failed:\n{output[-3000:]}")
        return elapsed, task_spans(output, args.tasks)

    for name in DECORATORS:  # warm: build the virtualenv / environment caches
        run(name)
    totals: dict[str, list[float]] = {name: [] for name in DECORATORS}
    spans: dict[str, list[float]] = {name: [] for name in DECORATORS}
    for _ in range(args.runs):
        for name in DECORATORS:  # interleaved, so drift hits all variants alike
            total, task_times = run(name)
            totals[name].append(total)
            spans[name].extend(task_times)

    print(f"{args.tasks} chained tasks importing {PACKAGE}; {args.runs} warm `airflow dags test` runs each:")
    per_task = {name: statistics.median(values) for name, values in spans.items()}
    for name in DECORATORS:
        print(
            f"  {name:10s} total {statistics.median(totals[name]):6.2f} s (median; best {min(totals[name]):.2f}), "
            f"per task {per_task[name] * 1000:6.1f} ms (median)"
        )
    overhead = {name: per_task[name] - per_task["plain"] for name in ("virtualenv", "infra")}
    for name, seconds in overhead.items():
        print(f"  {name:10s} {seconds * 1000:6.1f} ms per task over plain @task")
    ratio = overhead["infra"] / overhead["virtualenv"] if overhead["virtualenv"] > 0 else float("inf")
    print(f"RATIO infra/virtualenv per-task overhead = {ratio:.2f}x (target <= 0.7x)")


if __name__ == "__main__":
    main()
