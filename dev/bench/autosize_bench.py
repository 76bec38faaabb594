"""Benchmark (issue 17): automatic requests against over- and under-requested declarations.

A reference DAG on the local target (cgroups enforce each call's memory and CPU):
  - six tasks (two plain, a mapped one of three indexes, one more) declare first-run
    defaults 4x to 16x what they use ("auto:1Gi" for ~90 MiB of peak; "auto:4" cores for a
    loop that keeps one core about half busy);
  - `tight` declares "auto:96Mi" for ~150 MiB: its first run is killed for memory once and
    escalated (on_oom="double").
It runs --runs times (default 4: the first on the defaults, then three sized from history).
Per run it prints the requested GiB-hours and core-hours (each call's request times its wall
time, summed; an OOM-killed try counts too, at its request and its time), the tries that
failed for memory, and the escalations. Targets: run 4 (after three runs with `auto`)
requests >= 40% less GiB-hours and core-hours than run 1; no task fails for memory after
run 1; `tight` succeeds after at most one escalation.

    .venv/bin/python dev/bench/autosize_bench.py [--runs 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from dagtest import AIRFLOW, bench_home

DAG = '''
import datetime as dt
import time

from airflow.sdk import dag
from airflow_infra import infra_task


def work(mib, seconds, busy):
    """Hold `mib` MiB (every page touched) for `seconds`, busy a `busy` share of the time."""
    block = bytearray(mib << 20)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        spin = time.monotonic() + 0.01 * busy
        while time.monotonic() < spin:
            pass
        time.sleep(0.01 * (1 - busy))
    return len(block)


@dag(schedule=None, catchup=False, dag_id="autosize_reference")
def reference():
    @infra_task(memory="auto:1Gi", cpu="auto:4")  # ~90 MiB peak (about 11x), ~0.5 cores (8x)
    def extract() -> int:
        return work(60, 4, 0.5)

    @infra_task(memory="auto:512Mi", cpu="auto:2")  # ~70 MiB (about 7x), ~0.5 cores (4x)
    def clean(n: int) -> int:
        return work(40, 4, 0.5)

    @infra_task(memory="auto:512Mi", cpu="auto:1")  # ~60 MiB each (about 8x), ~0.25 cores (4x)
    def features(shard: int) -> int:
        return work(30, 3, 0.25)

    @infra_task(memory="auto:2Gi", cpu="auto:4")  # ~130 MiB (about 16x), ~0.9 cores (4.4x)
    def train(n: int, parts: list) -> int:
        return work(100, 5, 0.9)

    @infra_task(memory="auto:96Mi", cpu="auto:1", on_oom="double", retries=1, retry_delay=dt.timedelta(0))
    def tight() -> int:  # under-requested: ~150 MiB against 96Mi
        return work(120, 2, 0.5)

    n = extract()
    train(clean(n), features.expand(shard=[0, 1, 2]))
    tight()


reference()
'''

INFRA_YAML = """# the defaults, written out: what a platform team would set
autosize:
  memory: {default: 1Gi, min: 64Mi, max: 64Gi}
  cpu: {default: 1, min: 0.1, max: 16}
  percentile: 95
  headroom: 1.25
  runs: 5
"""


def run_once(env: dict[str, str], home: Path) -> dict:
    proc = subprocess.run([*AIRFLOW, "dags", "test", "autosize_reference"], env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or "state=success" not in output:
        sys.exit(f"the reference DAG failed:\n{output[-4000:]}")
    run_id = [line for line in output.splitlines() if "DagRun Finished" in line][-1].split("run_id=")[1].split(",")[0]
    return figures(home / "infra" / "artifacts", run_id)


def figures(artifacts: Path, run_id: str) -> dict:
    """Requested GiB-hours and core-hours of one run (every try), OOM-killed tries, escalations."""
    from airflow_infra.artifacts import path_component

    root = artifacts / "autosize_reference" / path_component(run_id)
    gib_hours = core_hours = 0.0
    oom_tries, escalations, sizes = [], [], {}
    for call_json in sorted(root.glob("*/*/*/call.json")):
        folder = call_json.parent
        meta = json.loads(call_json.read_text())
        outcome_file = folder / "outcome.json"
        wall = None
        if outcome_file.exists():
            wall = json.loads(outcome_file.read_text()).get("metrics", {}).get("wall_seconds")
        if wall is None:  # a try killed before it wrote an outcome: from its submission to its OOM record
            record = folder / "oom.json"
            wall = (record.stat().st_mtime - call_json.stat().st_mtime) if record.exists() else 0.0
        memory = meta["resources"].get("memory") or 0
        cpu = meta["resources"].get("cpu") or 0
        gib_hours += memory / 2**30 * wall / 3600
        core_hours += cpu * wall / 3600
        task = meta["task_id"] + (f"[{meta['map_index']}]" if meta["map_index"] >= 0 else "")
        if (folder / "oom.json").exists():
            oom_tries.append(f"{task} try {meta['try_number']}")
        if meta.get("escalated"):
            escalations.append(f"{task}: {meta['escalated']['from']} -> {meta['escalated']['to']}")
        if outcome_file.exists():
            sizes[task] = (meta["resources"].get("memory"), cpu)
    return {"run_id": run_id, "gib_hours": gib_hours, "core_hours": core_hours, "oom": oom_tries,
            "escalations": escalations, "sizes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from airflow_infra.quantities import format_bytes

    home, env = bench_home("autosize-bench-", {"autosize_reference.py": DAG})
    (home / "infra.yaml").write_text(INFRA_YAML)
    results = []
    for n in range(1, args.runs + 1):
        result = run_once(env, home)
        results.append(result)
        sizes = ", ".join(f"{t} {format_bytes(m)}/{c:g}" for t, (m, c) in sorted(result["sizes"].items()))
        print(f"run {n}: {result['gib_hours'] * 1000:.3f} GiB-mh, {result['core_hours'] * 1000:.3f} core-mh requested; "
              f"OOM-killed tries: {result['oom'] or 'none'}; escalations: {result['escalations'] or 'none'}")
        print(f"        requests (memory/cores): {sizes}")
    first, last = results[0], results[-1]
    memory_cut = 1 - last["gib_hours"] / first["gib_hours"]
    cpu_cut = 1 - last["core_hours"] / first["core_hours"]
    later_ooms = [o for r in results[1:] for o in r["oom"]]
    print(f"run {len(results)} vs run 1: GiB-hours -{memory_cut:.0%}, core-hours -{cpu_cut:.0%} (target: both >= 40%)")
    print(f"OOM-killed tries after run 1: {len(later_ooms)} (target 0); tight's escalations in run 1: "
          f"{sum(e.startswith('tight') for e in first['escalations'])} (target <= 1)")
    print(f"(milli-hours: GiB-mh = GiB x hours x 1000; the store is {home / 'infra' / 'artifacts'})")


if __name__ == "__main__":
    main()
