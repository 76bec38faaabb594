"""Helpers of tests/test_task_compat.py: Airflow's own example DAGs rewritten to `@task.infra`."""
