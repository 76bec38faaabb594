"""airflow-infra: declare what a task needs; the provider builds, routes and runs it.

Only light names are imported eagerly: DAG files import this package at parse time.
"""

from __future__ import annotations

__version__ = "0.1.0"

from airflow_infra.spec import Environment, Resources

__all__ = ["Environment", "InfraOperator", "Resources", "__version__", "infra_task"]


def __getattr__(name: str):
    # The decorator and operator pull in Airflow's task SDK; load them on first use.
    if name == "infra_task":
        from airflow_infra.decorator import infra_task

        return infra_task
    if name == "InfraOperator":
        from airflow_infra.operator import InfraOperator

        return InfraOperator
    raise AttributeError(f"module 'airflow_infra' has no attribute {name!r}")
