"""Benchmark (a): parse time of a 200-task DAG, @infra_task vs plain @task.

All variants parse the same shape of DAG (200 tasks, chained in pairs) in the same
process, with imports warmed up, alternating, many rounds; the figures are the ratios of
the medians: every task declaring the same packages and resources, and every task
declaring differently (so no declared value is validated twice). Target: both <= 1.05x.

    .venv/bin/python dev/bench/parse_bench.py [--tasks 200] [--rounds 31]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = '''
from airflow.sdk import dag, task
{import_line}

@dag(schedule=None, dag_id="{dag_id}")
def build():
    previous = None
    for i in range({n}):
        @{decorator}
        def step(x=None):
            return x
        current = step.override(task_id=f"step_{{i}}")(previous)
        previous = current if i % 2 == 0 else None

build()
'''

VARIANTS = {
    "plain": ("", "task"),
    "infra": (
        "from airflow_infra import infra_task",
        'infra_task(packages=["pandas==2.2.*", "numpy<2"], cpu=2, memory="4Gi", timeout="1h")',
    ),
    # Every task declares something different, so no declaration is validated twice.
    "infra_distinct": (
        "from airflow_infra import infra_task",
        'infra_task(packages=[f"pandas==2.{i}.*", "numpy<2"], cpu=2, memory=f"{i + 1}Gi", timeout="1h")',
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="parse-bench-"))
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    files = {}
    for name, (import_line, decorator) in VARIANTS.items():
        folder = home / name
        folder.mkdir()
        files[name] = folder / f"bench_{name}.py"
        files[name].write_text(TEMPLATE.format(import_line=import_line, decorator=decorator, n=args.tasks, dag_id=f"bench_{name}"))

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import task  # noqa: F401  (both variants need the task SDK)

    started = time.perf_counter()
    import airflow_infra.decorator  # noqa: F401  (what a DAG file's first @infra_task pays once per process)
    import_ms = (time.perf_counter() - started) * 1000

    from airflow_infra import spec
    from airflow_infra.pipeline import declaration

    def parse(name: str) -> float:
        # Airflow parses each file in a fresh process: start every parse with cold memos.
        for memo in declaration._VALID.values():
            memo.clear()
        declaration._VALID_TARGETS.clear()
        spec._canonical_requirement.cache_clear()
        t0 = time.perf_counter()
        bag = DagBag(dag_folder=str(files[name]))
        elapsed = time.perf_counter() - t0
        assert not bag.import_errors, bag.import_errors
        assert len(bag.dags[f"bench_{name}"].tasks) == args.tasks
        return elapsed

    for name in VARIANTS:  # warm-up
        parse(name)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            times[name].append(parse(name))
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"python {sys.version.split()[0]}, {args.tasks} tasks, {args.rounds} rounds, median parse time:")
    for name, value in med.items():
        print(f"  {name:14s} {value * 1000:8.1f} ms  ({value / args.tasks * 1e6:.0f} us/task)")
    print(f"  airflow_infra import (once per process, not in the medians): {import_ms:.1f} ms")
    print(f"RATIO infra/plain = {med['infra'] / med['plain']:.3f}x (target <= 1.05x)")
    print(f"RATIO infra_distinct/plain = {med['infra_distinct'] / med['plain']:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
