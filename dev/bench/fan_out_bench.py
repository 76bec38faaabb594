"""Benchmark (fan-out): one small function over many items on the local target, under
`airflow dags test`.

Every DAG is make_items (plain @task) -> the items' stage -> reduce (an @infra_task that sums
the results, so every variant hands its results on the same way; the sums are printed and
checked against the bench's own). The function is WORK, the same expression in every stage:
- fanout: `@infra_task` `.fan_out(x=make_items())`, default chunk and parallelism: ONE task
  instance, chunks in processes forked from the warm runtime;
- pool:   one plain @task mapping WORK over the items with multiprocessing.Pool(os.cpu_count());
- expand: `@infra_task` `.expand(x=make_items())`, Airflow's dynamic task mapping, over
  --expand items (default 1,000; one task instance per item), for scale.

Timing (--items, default 10,000): each DAG runs once to warm caches, then --runs rounds with
the variants interleaved; before each timed run the bench waits (2 min at most) for the
1-minute load average to fall below 1.5, and prints it. Figures are medians of the wall time
of the whole `airflow dags test` (its fixed cost included, as a user sees it) and of the
stage's span in its log (the first "[DAG TEST] starting task_id=..." of the stage to its last
"end task"). Task instances are the "[DAG TEST] starting" lines.
Targets: fanout/pool stage span <= 1.5x (the total's ratio is shown too); fanout uses <= 3
task instances.

Memory (--items vs --big, default 100,000): the fan-out DAG once at each size. Under `dags
test` every task runs inside the `airflow dags test` process itself (run_task_in_process),
so that process is the worker: a thread polls /proc every 0.1 s for it and its descendants.
Reported: the worker's VmHWM (peak RSS, the kernel's own high-water mark, so no peak up to
the last poll is missed between polls), how far its RSS rose during the fan-out task's span above where it
stood at the start (what the fan-out itself costs the worker, apart from Airflow and the
items' list), and the largest VmHWM among the runtime's call processes (the fan-out's
driver and the reduce; the `runtime.py` processes forked from the warm server; one that
lives less than a poll is "not caught"). Target: the
worker's figures stay flat from --items to --big.

    .venv/bin/python dev/bench/fan_out_bench.py [--runs 3] [--items 10000] [--big 100000] [--expand 1000] [--only timing,expand,memory]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

from dagtest import _STAMP, AIRFLOW, bench_home, dags_test

WORK = "sum(i * x for i in range(200)) % 1000 + x * x + 1"  # a few microseconds of Python per item

HEAD = '''
from airflow.sdk import dag, task
from airflow_infra import infra_task

@task
def make_items():
    return list(range({n}))

@infra_task
def reduce(results):
    total = sum(results)
    print(f"REDUCED n={{len(results)}} sum={{total}}")
    return total
'''

INFRA_STAGE = '''
@infra_task
def stage(x):
    return {work}
'''

POOL_STAGE = '''
@task
def stage(items):
    import multiprocessing, os
    from pool_work import f
    # close+join, not `with` (terminate): Airflow's SIGTERM handler, inherited by the forked
    # workers, ignores SIGTERM outside the task's own process, so terminate() waits forever.
    pool = multiprocessing.Pool(os.cpu_count())
    results = pool.map(f, items)
    pool.close()
    pool.join()
    return results
'''

STAGES = {  # variant: (its stage, how the DAG calls it)
    "fanout": (INFRA_STAGE, "stage.fan_out(x=make_items(), chunk=None, parallelism=None, max_failures=0)"),
    "pool": (POOL_STAGE, "stage(make_items())"),
    "expand": (INFRA_STAGE, "stage.expand(x=make_items())"),
}


def dag_source(variant: str, n: int) -> str:
    stage, call = STAGES[variant]
    return (HEAD.format(n=n) + stage.format(work=WORK)
            + f'\n@dag(schedule=None, dag_id="{variant}_{n}")\ndef build():\n    reduce({call})\n\nbuild()\n')


def settle() -> float:
    """The 1-minute load average once below 1.5 (or after 2 minutes of waiting for it)."""
    deadline = time.monotonic() + 120
    while os.getloadavg()[0] >= 1.5 and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


class Sampler(threading.Thread):
    """Polls /proc for the `dags test` process (the worker) and the runtime's call processes."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.worker_hwm = self.call_hwm = 0
        self.worker_rss: list[tuple[float, int]] = []  # (epoch seconds, KiB)

    @staticmethod
    def _status(pid: str) -> dict[str, int]:
        with open(f"/proc/{pid}/status") as fh:
            found = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in fh) if k in ("PPid", "VmHWM", "VmRSS")}
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return {**found, "runtime": b"runtime.py" in fh.read()}

    def run(self) -> None:
        while not self.stop.is_set():
            seen: dict[int, dict[str, int]] = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    seen[int(pid)] = self._status(pid)
                except OSError:  # gone meanwhile
                    pass
            if self.root in seen:
                self.worker_hwm = max(self.worker_hwm, seen[self.root].get("VmHWM", 0))
                self.worker_rss.append((time.time(), seen[self.root].get("VmRSS", 0)))
            for pid, status in seen.items():
                # A call: a runtime process whose parent is the warm server (a runtime process
                # that is the worker's child); the call's own children are the fan-out's chunks.
                server = seen.get(status["PPid"], {})
                if status["runtime"] and server.get("runtime") and server.get("PPid") == self.root:
                    self.call_hwm = max(self.call_hwm, status.get("VmHWM", 0))
            self.stop.wait(0.1)


def run(env: dict[str, str], variant: str, n: int) -> dict:
    """One timed `dags test` of variant over n items, sampled; its figures."""
    load = settle()
    started = time.perf_counter()
    proc = subprocess.Popen([*AIRFLOW, "dags", "test", f"{variant}_{n}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        output = proc.communicate(timeout=3600)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit(f"{variant}_{n}: no end after an hour:\n{proc.communicate()[0][-5000:]}")
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0 or "state=success" not in output:
        sys.exit(f"{variant}_{n} failed:\n{output[-5000:]}")
    starts, ends, instances = [], [], 0
    for line in output.splitlines():
        match = _STAMP.match(line)
        if match:
            instances += match.group(2) == "starting"
            if match.group(3) == "stage":
                stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
                (starts if match.group(2) == "starting" else ends).append(stamp)
    reduced = re.findall(r"REDUCED (n=\d+ sum=-?\d+)", output)
    if not reduced or not starts or not ends:
        sys.exit(f"{variant}_{n}: no REDUCED line or no stage span in the output:\n{output[-5000:]}")
    first, last = min(starts), max(ends)
    during = [rss for t, rss in sampler.worker_rss if first <= t <= last]
    before = [rss for t, rss in sampler.worker_rss if t <= first]
    rise = max(during) - before[-1] if during and before else float("nan")
    return {"wall": wall, "span": last - first, "instances": instances, "load": load, "reduced": reduced[-1],
            "worker_hwm": sampler.worker_hwm, "rise": rise, "call_hwm": sampler.call_hwm}


def expected(n: int) -> str:
    f = eval(f"lambda x: {WORK}")  # the very expression the DAGs run
    return f"n={n} sum={sum(f(x) for x in range(n))}"


def show(variant: str, n: int, results: list[dict]) -> None:
    wall, span = statistics.median(r["wall"] for r in results), statistics.median(r["span"] for r in results)
    sums = {r["reduced"] for r in results}
    check = "ok" if sums == {expected(n)} else f"MISMATCH, expected {expected(n)}"
    print(f"  {variant:6s} {n:6d} items: total {wall:6.2f} s, stage span {span:6.2f} s ({span / n * 1000:.3f} ms per item), "
          f"{results[0]['instances']} task instances; reduce {', '.join(sorted(sums))} ({check})")
    print("         runs: " + "; ".join(f"total {r['wall']:.2f} s span {r['span']:.2f} s at load {r['load']:.2f}" for r in results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--expand", type=int, default=1_000)
    parser.add_argument("--only", default="timing,expand,memory", help="comma-separated: timing, expand, memory")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if parts - {"timing", "expand", "memory"}:
        parser.error(f"--only: unknown parts {parts - {'timing', 'expand', 'memory'}}")

    plan = []  # (variant, n) timed in each round
    if "timing" in parts:
        plan += [("fanout", args.items), ("pool", args.items)]
    if "expand" in parts:
        plan.append(("expand", args.expand))
    sizes = {(v, n) for v, n in plan} | ({("fanout", args.items), ("fanout", args.big)} if "memory" in parts else set())
    # The pool's function lives in a module of its own in the DAGs folder (on sys.path): Pool
    # pickles it by name, and a function of the DAG file is not the object found under that name.
    files = {f"{v}_{n}.py": dag_source(v, n) for v, n in sizes} | {"pool_work.py": f"def f(x):\n    return {WORK}\n"}
    _, env = bench_home("fan-out-bench-", files)
    print(f"{os.cpu_count()} CPUs; WORK = {WORK}", flush=True)

    # One throwaway run each (environment build, warm runtime, .pyc files); the expected
    # span counts make dags_test refuse a run that did not use the task instances it should.
    for variant, n in sorted(sizes):
        if n != args.big:
            dags_test(env, f"{variant}_{n}", n + 2 if variant == "expand" else 3)
    results: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    for _ in range(args.runs):
        for key in plan:
            results[key].append(run(env, *key))
            print(f"    ran {key[0]} over {key[1]}: {results[key][-1]['wall']:.2f} s at load {results[key][-1]['load']:.2f}", flush=True)

    if plan:
        print(f"\n{args.runs} warm `airflow dags test` runs each, interleaved (medians):")
        for key in plan:
            show(*key, results[key])
    if "timing" in parts:
        fan, pool = results[("fanout", args.items)], results[("pool", args.items)]
        for figure in ("span", "wall"):
            ratio = statistics.median(r[figure] for r in fan) / statistics.median(r[figure] for r in pool)
            target = "target <= 1.5x" if figure == "span" else "for information"
            print(f"RATIO fanout/pool {'stage span' if figure == 'span' else 'total wall'} = {ratio:.2f}x ({target})")
        print(f"TASK INSTANCES fanout = {fan[0]['instances']} (target <= 3); pool = {pool[0]['instances']}")
    if "expand" in parts:
        ex = results[("expand", args.expand)]
        print(f"EXPAND {args.expand} items: total {statistics.median(r['wall'] for r in ex):.2f} s, "
              f"{ex[0]['instances']} task instances")

    if "memory" in parts:
        print("\nMemory, fan-out DAG once at each size (KiB; worker = the `airflow dags test` process):")
        for n in (args.items, args.big):
            r = run(env, "fanout", n)
            ok = "ok" if r["reduced"] == expected(n) else f"MISMATCH, expected {expected(n)}"
            print(f"  {n:6d} items: worker VmHWM {r['worker_hwm']} KiB, worker RSS rise during the fan-out task {r['rise']} KiB, "
                  f"largest runtime call VmHWM {str(r['call_hwm']) + ' KiB' if r['call_hwm'] else 'not caught'}; total {r['wall']:.2f} s, span {r['span']:.2f} s, "
                  f"{r['instances']} task instances, load {r['load']:.2f}; reduce {r['reduced']} ({ok})", flush=True)


if __name__ == "__main__":
    main()
