"""Benchmark (c): 300 mapped task instances, @infra_task on the local target vs plain @task,
under `airflow dags test`.

Two DAGs of one task mapped over --instances values (default 300), each instance importing
the same package (six==1.16.0): plain @task (the package from the worker's env) and
@infra_task (warm environment cache and warm runtime). Each DAG runs once to warm caches,
then --runs times, interleaved. The figure is the ratio of the median total wall times of
`airflow dags test` (its fixed cost included, as a user sees it); the median per-instance
span ("[DAG TEST] starting" to "end task") is printed too. Target: infra/plain <= 1.3x.

    .venv/bin/python dev/bench/mapped_bench.py [--runs 3] [--instances 300]
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
from datetime import datetime
from pathlib import Path

PACKAGE = "six==1.16.0"

TEMPLATE = '''
from airflow.sdk import dag, task
from airflow_infra import infra_task

@dag(schedule=None, dag_id="mapped_{name}")
def build():
    @{decorator}
    def step(x):
        import six  # the same package in both variants
        return x + 1

    step.expand(x=list(range({n})))

build()
'''

DECORATORS = {
    "plain": "task",
    "infra": f'infra_task(packages=["{PACKAGE}"])',
}

_STAMP = re.compile(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\S+) map_index=(-?\d+)")


def instance_spans(output: str, expected: int) -> list[float]:
    """Seconds from each instance's "[DAG TEST] starting" line to its "end task" line."""
    started: dict[tuple[str, str], datetime] = {}
    spans = []
    for line in output.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        key = (match.group(3), match.group(4))
        if match.group(2) == "starting":
            started[key] = stamp
        elif key in started:
            spans.append((stamp - started.pop(key)).total_seconds())
    if len(spans) != expected:
        sys.exit(f"expected {expected} instance spans in the log, found {len(spans)}")
    return spans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instances", type=int, default=300)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="mapped-bench-"))
    dags = home / "dags"
    dags.mkdir()
    for name, decorator in DECORATORS.items():
        (dags / f"mapped_{name}.py").write_text(TEMPLATE.format(name=name, decorator=decorator, n=args.instances))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    env.pop("AIRFLOW_INFRA_TARGET", None)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)

    def run(name: str) -> tuple[float, list[float]]:
        started = time.perf_counter()
        proc = subprocess.run([*airflow, "dags", "test", f"mapped_{name}"], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or "state=success" not in output:
            sys.exit(f"mapped_{name} failed:\n{output[-3000:]}")
        return elapsed, instance_spans(output, args.instances)

    for name in DECORATORS:  # warm: the environment cache, the DB
        run(name)
    totals: dict[str, list[float]] = {name: [] for name in DECORATORS}
    spans: dict[str, list[float]] = {name: [] for name in DECORATORS}
    for _ in range(args.runs):
        for name in DECORATORS:  # interleaved, so drift hits both alike
            total, instance_times = run(name)
            totals[name].append(total)
            spans[name].extend(instance_times)

    print(f"{args.instances} mapped instances importing {PACKAGE}; {args.runs} warm `airflow dags test` runs each:")
    total = {name: statistics.median(values) for name, values in totals.items()}
    for name in DECORATORS:
        print(
            f"  {name:6s} total {total[name]:6.2f} s (median; runs {', '.join(f'{t:.2f}' for t in totals[name])}), "
            f"{total[name] / args.instances:.3f} s per instance; span per instance {statistics.median(spans[name]) * 1000:.1f} ms (median)"
        )
    print(f"  infra over plain: {(total['infra'] - total['plain']) / args.instances * 1000:.1f} ms per instance")
    print(f"RATIO infra/plain total = {total['infra'] / total['plain']:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
