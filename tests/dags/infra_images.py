"""Five tasks over two environments (tests/test_images.py builds their images)."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_images():
    results = []
    for i in range(3):
        @infra_task(task_id=f"a_{i}", packages=["six==1.16.0"])
        def with_six() -> str:
            import six

            return six.__version__

        results.append(with_six())
    for i in range(2):
        # The same environment as each other, spelled differently.
        @infra_task(task_id=f"b_{i}", packages=["SIX == 1.17.0"] if i else ["six==1.17.0"])
        def with_newer_six() -> str:
            import six

            return six.__version__

        results.append(with_newer_six())


infra_images()
