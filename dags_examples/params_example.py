"""Params drive both a function argument and a resource.

`lr` reaches the function as a float; `memory` sets the task's memory request, and with
routing rules in infra.yaml (e.g. `- {when: "memory > 1Gi", target: bigmem}`) decides where
the task runs. Context values the function names as parameters arrive as plain values.

    airflow dags test params_example -c '{"lr": 0.5, "memory": "2Gi"}'
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag

from airflow_infra import infra_task


@dag(
    schedule=None,
    catchup=False,
    tags=["airflow-infra", "example"],
    params={
        "lr": Param(0.01, type="number", minimum=0),
        "epochs": Param(3, type="integer", minimum=1),
        "memory": Param("256Mi", type="string", description="memory request of `train`, e.g. 512Mi or 2Gi"),
    },
)
def params_example():
    @infra_task(memory="{{ params.memory }}", cpu=0.5, timeout="10m")
    def train(lr: float, params: dict, run_id: str, logical_date: datetime | None) -> dict:
        loss = 1.0
        for epoch in range(params["epochs"]):
            loss *= 1 - min(lr, 0.9)
            print(f"epoch {epoch}: loss {loss:.4f}")
        return {"lr": lr, "epochs": params["epochs"], "loss": loss, "run_id": run_id,
                # None when the run was triggered without a logical date (allowed in Airflow 3)
                "year": logical_date.year if logical_date else None}

    @infra_task
    def report(result: dict) -> str:
        line = f"lr={result['lr']} epochs={result['epochs']} loss={result['loss']:.4f}"
        print(line)
        return line

    report(train(lr="{{ params.lr }}"))


params_example()
