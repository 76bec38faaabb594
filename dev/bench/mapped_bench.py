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
import statistics

from dagtest import bench_home, interleaved

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

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instances", type=int, default=300)
    args = parser.parse_args()

    files = {f"mapped_{name}.py": TEMPLATE.format(name=name, decorator=decorator, n=args.instances) for name, decorator in DECORATORS.items()}
    _, env = bench_home("mapped-bench-", files)
    totals, spans = interleaved(list(DECORATORS), args.runs, env, "mapped_{name}", args.instances)

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
