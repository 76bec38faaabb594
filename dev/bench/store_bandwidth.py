"""Benchmark: passing 1 GiB between two tasks through the artifact store vs a raw copy.

"Ours" is exactly what the two tasks' runtimes do: the producer pickles its result and
writes it atomically (temp file, fsync, rename) into the store; the consumer opens the
reference and unpickles it. "Raw" writes the same bytes to a file on the same store
(with the same fsync) and reads them back. Each is run --rounds times, best kept; the
figure is raw time / our time, i.e. our share of raw bandwidth. Target: >= 0.5.

    .venv/bin/python dev/bench/store_bandwidth.py [--gib 1] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from airflow_infra import runtime  # noqa: E402  (stdlib + cloudpickle only: no Airflow needed)
from airflow_infra.runtime import REF_KEY, atomic_write  # noqa: E402


def through_store(value: bytes, folder: Path) -> float:
    started = time.perf_counter()
    [output] = runtime._write_outputs(value, {"xcom_max_bytes": 0}, str(folder))
    loaded = runtime.resolve_refs({REF_KEY: f"file://{folder / output['file']}"}, {})
    elapsed = time.perf_counter() - started
    assert len(loaded) == len(value)
    return elapsed


def raw_copy(value: bytes, folder: Path) -> float:
    started = time.perf_counter()
    atomic_write(folder / "raw.bin", value)
    with open(folder / "raw.bin", "rb") as fh:
        loaded = fh.read()
    elapsed = time.perf_counter() - started
    assert len(loaded) == len(value)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="a folder on the store's filesystem (default: a temp folder)")
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    value = bytes(range(256)) * (size // 256)
    best = {"store": float("inf"), "raw": float("inf")}
    for _ in range(args.rounds):
        for name, fn in (("raw", raw_copy), ("store", through_store)):
            folder = Path(tempfile.mkdtemp(prefix="bandwidth-", dir=args.dir))
            try:
                best[name] = min(best[name], fn(value, folder))
            finally:
                shutil.rmtree(folder)
    gib = size / 2**30
    print(f"{gib:.2f} GiB, best of {args.rounds}, on {args.dir or tempfile.gettempdir()} ({os.uname().sysname}):")
    print(f"  raw copy (write+fsync, read):     {best['raw']:6.2f} s  {gib / best['raw']:.2f} GiB/s")
    print(f"  through the store (task to task): {best['store']:6.2f} s  {gib / best['store']:.2f} GiB/s")
    print(f"RATIO store/raw bandwidth = {best['raw'] / best['store']:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
