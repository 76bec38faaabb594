"""Benchmark (load): --runs (default 50) runs of dags_examples/recsys_seed.py at once on the
production-shaped Airflow (tests/production.py, dev/prod-up.sh: CeleryExecutor, two workers
of 4 slots, PostgreSQL, Redis).

The workers share one environment cache ($AIRFLOW_HOME/infra/envs of a fresh state folder),
one image registry namespace of the bench's own (so every image starts missing) and the
artifact store on a fresh bucket of moto's S3. The runs are triggered through the REST API
all at once, with distinct run ids. Printed:
  - runs succeeded / failed (a failed run's failed tasks and their log tails);
  - wall time (first trigger to the last run's end), task instances, scheduler throughput
    (task instances finished per minute of wall time), first queued to last end;
  - task instances per Celery worker (worker logs; the TI `hostname` is the machine's);
  - builds per environment and image, counted in every task log ("environment X (built
    now|cached)", "image X (built now|present)"): target 1 each;
  - corruption: distinct `ensemble` results (target 1), calls in the store that are not ok,
    environment folders without their ready marker (target 0 each).

Needs root (prod-up.sh), the Docker engine, the registry on 127.0.0.1:5000 with the base
image (dev/start-docker.sh, dev/base-image.sh, dev/start-registry.sh) and moto.

    .venv/bin/python dev/bench/load_bench.py [--runs 50] [--timeout 3600] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# Before anything imports Airflow: this process reads the store and must not touch ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="load-bench-home-")
MOTO = f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '5001')}"
# The store URL names `aws_default`; this process resolves it as the deployment does.
os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
    {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1", "endpoint_url": MOTO}})

DAG = "recsys_seed"
BUILT = {"environment": re.compile(r"environment (\S+) \((built now|cached)\)"),
         "image": re.compile(r"image (\S+) \((built now|present)\)")}


def when(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def run_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"


def task_log(dep, run_id: str, task_id: str, try_number: int) -> str:
    answer = dep.get(f"{run_path(run_id)}/taskInstances/{task_id}/logs/{try_number}", params={"full_content": "true"})
    if answer.status_code != 200:
        return f"(log unavailable: HTTP {answer.status_code})"
    lines = []
    for entry in answer.json()["content"]:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        lines.append(str(entry.get("event", entry)))
        # An exception's type and message are fields of the entry, not in its event text.
        lines += [f"  {e.get('exc_type')}: {e.get('exc_value')}" for e in entry.get("error_detail") or []]
    return "\n".join(lines)


def trigger_all(dep, run_ids: list[str]) -> datetime:
    """POST every run at once from as many threads; returns when the first POST went out."""
    started = datetime.now(timezone.utc)
    with dep.client(dep.token) as client:  # httpx clients are thread-safe; 100 connections by default

        def one(run_id: str):
            return client.post(f"/api/v2/dags/{DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": {}})

        with ThreadPoolExecutor(len(run_ids)) as pool:
            for run_id, answer in zip(run_ids, pool.map(one, run_ids)):
                if answer.status_code != 200:
                    raise SystemExit(f"triggering {run_id}: HTTP {answer.status_code} {answer.text}")
    return started


def wait_all(dep, run_ids: list[str], timeout: float) -> dict[str, dict]:
    """The runs' records once all ended (or at the deadline), with progress every 30 s."""
    deadline, shown = time.monotonic() + timeout, 0.0
    wanted = set(run_ids)
    while True:
        runs, offset = {}, 0
        while True:  # paged: the API caps a page at 100
            page = dep.get(f"/api/v2/dags/{DAG}/dagRuns", params={"limit": 100, "offset": offset}).json()["dag_runs"]
            runs.update({r["dag_run_id"]: r for r in page if r["dag_run_id"] in wanted})
            offset += len(page)
            if len(page) < 100:
                break
        states = Counter(r["state"] for r in runs.values())
        if time.monotonic() - shown > 30:
            print(f"  {time.strftime('%H:%M:%S')} runs: {dict(states)}", flush=True)
            shown = time.monotonic()
        if states["success"] + states["failed"] == len(run_ids) or time.monotonic() > deadline:
            return runs
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for all runs to end")
    parser.add_argument("--keep", action="store_true", help="leave the deployment running (its state folder is printed)")
    args = parser.parse_args()

    import boto3

    from airflow_infra.client import Client
    from tests import production
    from tests.test_production import WORKLOAD

    subprocess.run(["bash", str(REPO / "dev" / "start-moto.sh")], check=True, timeout=300)
    tag = f"{os.getpid()}-{int(time.time())}"
    bucket = f"airflow-infra-load-{tag}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=MOTO, aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    artifacts = f"s3://aws_default@{bucket}/artifacts"
    # A namespace of its own: every image is missing from the registry at the start.
    yaml = production.deployment_yaml(f"127.0.0.1:5000/loadbench{tag}", artifacts)
    # This Docker engine has no GPU runtime, so the docker target refuses fit_b (gpu=1): send
    # it to the local target, as tests/test_images.py does (GPU_ELSEWHERE).
    yaml = yaml.replace("rules:\n", 'rules:\n  - {when: "gpu >= 1", target: local}\n', 1)
    # Airflow's default of 16 active runs per DAG would queue most of them: let all be active
    # at once, so the workers' 8 slots and the scheduler are what limits the load.
    env = {"AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": str(args.runs)}
    dep = production.start([REPO / "dags_examples" / "recsys_seed.py"], yaml, env)
    print(f"deployment: {dep.url}, state {dep.state}", flush=True)
    try:
        dep.wait_for_dags([DAG])
        run_ids = [f"load-{tag}-{i:03d}" for i in range(args.runs)]
        started = trigger_all(dep, run_ids)
        print(f"{args.runs} runs triggered in {(datetime.now(timezone.utc) - started).total_seconds():.1f}s", flush=True)
        runs = wait_all(dep, run_ids, args.timeout)
        report(dep, args, run_ids, runs, started, artifacts, Client, WORKLOAD)
    finally:
        if args.keep:
            print(f"kept: PROD_DIR={dep.state} bash dev/prod-down.sh --purge  # to stop it")
        else:
            production.stop(dep.env)
        shutil.rmtree(os.environ["AIRFLOW_HOME"], ignore_errors=True)


def report(dep, args, run_ids, runs, started, artifacts, Client, workload) -> None:
    states = Counter(runs.get(r, {}).get("state", "missing") for r in run_ids)
    ends = [when(r["end_date"]) for r in runs.values() if r.get("end_date")]
    wall = (max(ends) - started).total_seconds() if ends else float("nan")
    tis = {r: dep.get(f"{run_path(r)}/taskInstances").json()["task_instances"] for r in run_ids}
    every = [ti for found in tis.values() for ti in found]
    finished = [ti for ti in every if ti["end_date"]]
    print(f"\nruns: {states['success']} succeeded, {states['failed']} failed, "
          f"{args.runs - states['success'] - states['failed']} not ended")
    for run_id in run_ids:
        failed = [ti for ti in tis[run_id] if ti["state"] not in ("success",)]
        if runs.get(run_id, {}).get("state") != "success":
            print(f"  {run_id}: {runs.get(run_id, {}).get('state')}; tasks not successful: "
                  f"{[(ti['task_id'], ti['state']) for ti in failed]}")
            for ti in failed:
                if ti["state"] in ("failed", "upstream_failed") and ti["try_number"]:
                    tail = task_log(dep, run_id, ti["task_id"], ti["try_number"]).splitlines()[-25:]
                    print(f"    --- {ti['task_id']} try {ti['try_number']} (log tail)\n      " + "\n      ".join(tail))

    queued = [when(ti["queued_when"]) for ti in every if ti["queued_when"]]
    span = (max(when(ti["end_date"]) for ti in finished) - min(queued)).total_seconds() if finished and queued else float("nan")
    waits = [(when(ti["start_date"]) - when(ti["queued_when"])).total_seconds() for ti in finished if ti["queued_when"] and ti["start_date"]]
    durations: dict[str, list[float]] = {}
    for ti in finished:
        if ti["start_date"]:
            durations.setdefault(ti["task_id"], []).append((when(ti["end_date"]) - when(ti["start_date"])).total_seconds())
    # Both Celery workers run on this machine, so the TI hostname cannot tell them apart;
    # each worker's log names the workloads it executed (as tests/test_production.py counts).
    per_worker = Counter()
    for log in sorted(dep.logs.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if (m := workload.search(line)) and m.group(2) in set(run_ids):
                per_worker[log.stem] += 1

    # Builds: every try's log of every task instance, counted per environment / image.
    builds: dict[tuple[str, str], Counter] = {}
    for run_id, found in tis.items():
        for ti in found:
            for try_number in range(1, (ti["try_number"] or 0) + 1):
                text = task_log(dep, run_id, ti["task_id"], try_number)
                for kind, pattern in BUILT.items():
                    for name, how in pattern.findall(text):
                        builds.setdefault((kind, name), Counter())[how] += 1

    # Corruption: identical inputs must give identical results, and nothing half-written.
    results = Counter()
    for run_id in run_ids:
        answer = dep.get(f"{run_path(run_id)}/taskInstances/ensemble/xcomEntries/return_value")
        results[json.dumps(answer.json().get("value"), sort_keys=True) if answer.status_code == 200 else f"HTTP {answer.status_code}"] += 1
    store, problems, calls = Client(artifacts), [], Counter()
    for run in store.runs(DAG):
        problems += run.problems
        for task in run.tasks.values():
            for index in task.map_indexes:
                for call in task.tries(index):
                    calls["ok" if call.status == "ok" else call.status] += 1
    envs = dep.home / "infra" / "envs"
    folders = [p for p in envs.iterdir() if p.is_dir()] if envs.exists() else []
    unfinished = [p.name for p in folders if not (p / ".airflow-infra-ready").exists()]

    print("\ntask instances per task: " + ", ".join(
        f"{t} {len(d)} (median {statistics.median(d):.1f}s)" for t, d in sorted(durations.items())))
    print(f"TI hostnames: {dict(Counter(ti['hostname'] for ti in every if ti['hostname']))}")
    print(f"TIs per Celery worker (worker logs): {dict(per_worker)}")
    print("builds (built now / reused):")
    for (kind, name), counts in sorted(builds.items()):
        reused = counts["cached"] + counts["present"]
        print(f"  {kind:11s} {name}: {counts['built now']} / {reused}")
    print(f"distinct ensemble results: {len(results)}" + "".join(f"\n  {n} x {v[:160]}" for v, n in results.most_common()))
    print(f"store calls: {dict(calls)}; store problems: {len(problems)}" + "".join(f"\n  {p}" for p in problems[:10]))
    print(f"environment cache: {len(folders)} folders, {len(unfinished)} without the ready marker {unfinished or ''}")

    rows = [
        ("runs succeeded", f"{states['success']}/{args.runs}", f"{args.runs}/{args.runs}", states["success"] == args.runs),
        ("wall time (first trigger -> last run end)", f"{wall:.1f} s", "", None),
        ("task instances finished", str(len(finished)), str(4 * args.runs), len(finished) == 4 * args.runs),
        ("throughput over wall time", f"{len(finished) / wall * 60:.1f} TI/min", "", None),
        ("first TI queued -> last TI end", f"{span:.1f} s", "", None),
        ("median queued -> started", f"{statistics.median(waits):.1f} s" if waits else "-", "", None),
        ("Celery workers used", str(len(per_worker)), "2", len(per_worker) == 2),
        ("environments / images seen", f"{sum(k == 'environment' for k, _ in builds)} / {sum(k == 'image' for k, _ in builds)}", "", None),
        ("builds per environment/image", str(sorted({c['built now'] for c in builds.values()})), "[1]",
         {c["built now"] for c in builds.values()} == {1}),
        ("distinct ensemble results", str(len(results)), "1", len(results) == 1),
        ("store calls not ok / problems", f"{sum(n for s, n in calls.items() if s != 'ok')} / {len(problems)}", "0 / 0",
         not problems and set(calls) <= {"ok"}),
        ("env folders without ready marker", str(len(unfinished)), "0", not unfinished),
    ]
    print(f"\n{'load: ' + str(args.runs) + ' x ' + DAG + ' on 2 Celery workers':45s} {'value':>16s} {'target':>8s}")
    for name, value, target, ok in rows:
        print(f"{name:45s} {value:>16s} {target:>8s} {'' if ok is None else ('ok' if ok else 'FAIL')}")


if __name__ == "__main__":
    main()
