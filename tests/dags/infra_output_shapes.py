"""Output of awkward shapes, and a call that outlives Airflow's execution_timeout
(run by tests/test_output_and_kills.py on the local and docker targets)."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"], params={"pid_dir": Param("", type="string")})
def infra_output_shapes():
    @infra_task
    def no_newline() -> int:
        import sys

        sys.stdout.write("50%...100%")  # a progress line that never ends
        return 1

    @infra_task
    def long_line() -> int:
        import sys

        sys.stdout.write("x" * (5 << 20))  # 5 MiB without a newline
        sys.stdout.write("END-OF-LONG-LINE")
        return 2

    @infra_task
    def lookalike() -> int:
        # Lines shaped like the local runtime's old and new control messages.
        print("\x1eairflow-infra\x1e exit 0")
        print('{"call": 1, "exit": 0}')
        print('{"call": 2, "pid": 1}')
        raise ValueError("still my own error")

    @infra_task(execution_timeout=dt.timedelta(seconds=4), retries=0)
    def overrun(pid_dir: str) -> None:
        import os
        import subprocess
        import time

        child = subprocess.Popen(["sleep", "300"])
        if pid_dir:
            with open(os.path.join(pid_dir, "pids"), "w") as fh:
                fh.write(f"{os.getpid()} {child.pid}")
        time.sleep(300)

    @infra_task(trigger_rule="all_done")
    def afterwards() -> int:
        return 7

    [no_newline(), long_line(), lookalike(), overrun("{{ params.pid_dir }}")] >> afterwards()


infra_output_shapes()
