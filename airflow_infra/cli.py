"""`airflow-infra`: look at what ran, from the artifact store (no Airflow database needed).

    airflow-infra runs DAG_ID             runs of a DAG, newest first
    airflow-infra show DAG_ID [RUN_ID]    per task: target, outcome, requested vs measured, hints
"""

from __future__ import annotations

import argparse
import sys

from airflow_infra.quantities import format_bytes


def _client(args: argparse.Namespace):
    from airflow_infra.client import Client

    return Client(args.store)


def cmd_runs(args: argparse.Namespace) -> int:
    runs = _client(args).runs(args.dag_id)
    if not runs:
        print(f"no runs of {args.dag_id} in the store")
        return 1
    for run in runs:
        calls = [task[i] for task in run.tasks.values() for i in task.map_indexes]
        failed = sum(1 for c in calls if c.outcome is not None and not c.ok)
        print(f"{run.submitted_at}  {run.run_id}  {len(calls)} calls, {failed} failed")
    return 0


def _status(call) -> str:
    if call.outcome is None:
        return "running/unfinished"
    if call.cache_hit:
        return f"cache hit (from {call.cache_hit['run_id']})"
    return "ok" if call.ok else f"failed: {call.error.get('type')}: {call.error.get('message')}"


def cmd_show(args: argparse.Namespace) -> int:
    from airflow_infra.rightsizing import advice

    client = _client(args)
    run = client.run(args.dag_id, args.run_id) if args.run_id else client.latest_run(args.dag_id)
    print(f"{run.dag_id}  {run.run_id}")
    for task_id, task in run.tasks.items():
        for index in task.map_indexes:
            call = task[index]
            label = task_id if index < 0 else f"{task_id}[{index}]"
            req, met = call.requested, call.metrics
            print(f"  {label}: {_status(call)} on {call.target!r} (try {call.try_number})")
            print(
                f"      memory {format_bytes(met.get('peak_memory_bytes'))} of {format_bytes(req.get('memory'))} requested; "
                f"cpu {met.get('cpu_seconds', 0.0):.2f}s in {met.get('wall_seconds', 0.0):.2f}s "
                f"({req.get('cpu') or '-'} cores requested)"
            )
            for hint in advice(req, met):
                print(f"      hint: {hint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow-infra", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="artifact store URL (default: from infra.yaml, else $AIRFLOW_HOME/infra/artifacts)")
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="list the runs of a DAG, newest first")
    runs.add_argument("dag_id")
    runs.set_defaults(func=cmd_runs)
    show = sub.add_parser("show", help="show a run's tasks: outcome, requested vs measured resources, hints")
    show.add_argument("dag_id")
    show.add_argument("run_id", nargs="?", help="default: the latest run")
    show.set_defaults(func=cmd_show)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyError as exc:
        print(f"airflow-infra: {exc.args[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
