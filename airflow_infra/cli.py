"""`airflow-infra`: plan and build images for DAGs; look at what ran (no Airflow database needed).

    airflow-infra plan DAG_FILE...        per task: target, why, image reference, whether it exists
    airflow-infra build DAG_FILE...       build and push each missing image once (a CI/CD step)
    airflow-infra runs DAG_ID             runs of a DAG, newest first
    airflow-infra show DAG_ID [RUN_ID]    per task: target, outcome, requested vs measured, hints
"""

from __future__ import annotations

import argparse
import sys

from airflow_infra.errors import InfraError
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
        failed = sum(1 for c in calls if c.status.startswith(("failed", "broken")))
        broken = f", {len(run.problems)} broken folders" if run.problems else ""
        print(f"{run.submitted_at or '?'}  {run.run_id}  {len(calls)} calls, {failed} failed{broken}")
    return 0


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
            print(f"  {label}: {call.status} on {call.target!r} (try {call.try_number})")
            print(
                f"      memory {format_bytes(met.get('peak_memory_bytes'))} of {format_bytes(req.get('memory'))} requested; "
                f"cpu {met.get('cpu_seconds', 0.0):.2f}s in {met.get('wall_seconds', 0.0):.2f}s "
                f"({req.get('cpu') or '-'} cores requested)"
            )
            for hint in advice(req, met):
                print(f"      hint: {hint}")
    for problem in run.problems:
        print(f"  broken: {problem}")
    return 0


def _plans(files: list[str], check: bool):
    from airflow_infra.config import load_config
    from airflow_infra.pipeline.plan import check_images, load_dags, plan_dag

    config = load_config()
    plans = [plan for path in files for dag in load_dags(path) for plan in plan_dag(dag, config)]
    if check:
        check_images(plans, config)
    return config, plans


def cmd_plan(args: argparse.Namespace) -> int:
    _, plans = _plans(args.dag_files, check=not args.no_check)
    for plan in plans:
        label = f"{plan.dag_id}.{plan.task_id}{' (mapped)' if plan.mapped else ''}"
        if plan.error:
            print(f"{label}\n    error: {plan.error}")
            continue
        call = plan.call
        print(f"{label}\n    target: {call.route.target} ({call.kind.name}): {call.route.reason}")
        if plan.templated:
            print(f"    templated, decided at run time: {', '.join(plan.templated)}")
        if plan.needs_image:
            exists = {True: "exists", False: "missing", None: "not checked"}[plan.exists]
            print(f"    image: {plan.reference} ({exists})")
        else:
            print(f"    environment: {call.environment_hash[:24]} (a {call.kind.name} target runs without an image; "
                  f"`build --all` would build {plan.reference})")
    return 1 if any(p.error for p in plans) else 0


def cmd_build(args: argparse.Namespace) -> int:
    from airflow_infra.images.service import ensure_image, plan_image

    config, plans = _plans(args.dag_files, check=False)
    wanted = {}
    for plan in plans:
        if plan.error:
            print(f"skipping {plan.dag_id}.{plan.task_id}: {plan.error}", file=sys.stderr)
        elif plan.needs_image or args.all:
            wanted.setdefault(plan.reference, plan)
    built = present = 0
    failed = []
    for i, (reference, plan) in enumerate(sorted(wanted.items()), 1):
        print(f"[{i}/{len(wanted)}] {reference} (for {plan.dag_id}.{plan.task_id})", flush=True)
        try:
            image = plan_image(plan.call.environment, plan.call.requirements_text, config)
            if ensure_image(image, config, lambda line: print(f"    {line}")):
                built += 1
            else:
                present += 1
                print("    present")
        except Exception as exc:  # noqa: BLE001 - report every failure, build the rest
            failed.append(reference)
            print(f"    FAILED: {exc}", file=sys.stderr)
    print(f"images: {built} built, {present} already present, {len(failed)} failed")
    return 1 if failed or any(p.error for p in plans) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow-infra", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="artifact store URL (default: from infra.yaml, else $AIRFLOW_HOME/infra/artifacts)")
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="per task: target, why, image reference, whether it exists")
    plan.add_argument("dag_files", nargs="+", metavar="DAG_FILE")
    plan.add_argument("--no-check", action="store_true", help="do not ask the registry/engine whether images exist")
    plan.set_defaults(func=cmd_plan)
    build = sub.add_parser("build", help="build and push each missing image once; non-zero exit if any fails")
    build.add_argument("dag_files", nargs="+", metavar="DAG_FILE")
    build.add_argument("--all", action="store_true", help="also build images for tasks the rules send to local targets")
    build.set_defaults(func=cmd_build)
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
    except InfraError as exc:
        print(f"airflow-infra: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
