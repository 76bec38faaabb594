"""OOM escalation over Airflow's tries (tests/test_oom_escalation.py): one run, several tasks.

With the test's infra.yaml (oom.max_memory: 128Mi; memory over 100Mi goes to target 'bigmem'):
- grows: 64Mi is too little for ~90 MiB; try 1 is killed, try 2 runs with 128Mi on 'bigmem';
- capped: ~300 MiB; try 1 at 64Mi, try 2 at the cap (128Mi), where escalation stops;
- per_index: index 0 fits in 64Mi, index 1 needs more: each index escalates on its own.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag

from airflow_infra import infra_task

ESCALATE = {"memory": "64Mi", "on_oom": "double", "retries": 2, "retry_delay": dt.timedelta(0)}


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_oom_escalation():
    @infra_task(**ESCALATE)
    def grows() -> int:
        block = bytearray(90 << 20)  # zero-filled: every page touched
        return len(block)

    @infra_task(**{**ESCALATE, "retries": 1})
    def capped() -> int:
        return len(bytearray(300 << 20))

    @infra_task(**ESCALATE)
    def per_index(mib: int) -> int:
        return len(bytearray(mib << 20))

    grows()
    capped()
    per_index.expand(mib=[8, 90])


infra_oom_escalation()
