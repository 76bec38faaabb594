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
import statistics
import sys
import tempfile
from pathlib import Path

from dagtest import bench_home, interleaved

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=N_TASKS)
    args = parser.parse_args()

    venv_cache = tempfile.mkdtemp(prefix="overhead-bench-venvs-")
    files = {
        f"bench_{name}.py": TEMPLATE.format(cache=venv_cache, name=name, decorator=decorator, n=args.tasks)
        for name, decorator in DECORATORS.items()
    }
    _, env = bench_home(
        "overhead-bench-",
        files,
        AIRFLOW__STANDARD__VENV_INSTALL_METHOD="uv",
        # @task.virtualenv finds uv on PATH: put this interpreter's scripts folder first.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    totals, spans = interleaved(list(DECORATORS), args.runs, env, "bench_{name}", args.tasks)

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
