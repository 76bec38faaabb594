"""Automatic requests over runs (tests/test_autosize_runs.py): memory="auto" / cpu="auto".

- grow: asks 'auto:1Gi' and 'auto:2' for ~40 MiB and well under a core: over-requested, so
  its second run asks for far less (and, by the test's rules, moves off target 'bigmem');
- shards: a mapped task; its indexes pool their history and get one size per run;
- tight: 'auto:48Mi' is too little for ~60 MiB: the first run escalates once
  (on_oom='double'), the second starts from what the escalated try used.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_autosize():
    @infra_task(memory="auto:1Gi", cpu="auto:2")
    def grow() -> int:
        return len(bytearray(40 << 20))  # zero-filled: every page touched

    @infra_task(memory="auto:512Mi")
    def shards(mib: int) -> int:
        return len(bytearray(mib << 20))

    @infra_task(memory="auto:48Mi", on_oom="double", retries=1, retry_delay=dt.timedelta(0))
    def tight() -> int:
        return len(bytearray(60 << 20))

    grow()
    shards.expand(mib=[5, 20, 30])
    tight()


infra_autosize()
