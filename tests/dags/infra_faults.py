"""Faults on the image targets (tests/test_faults.py): the Docker engine going away mid-task,
a container dying without a result, and Airflow's execution_timeout, each with a count of
what was left behind."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_engine_loss():
    @infra_task
    def before() -> int:
        return 5

    # The test kills the engine while try 1 sleeps, then starts it again within retry_delay:
    # try 2 runs on the restored engine, which still lists try 1's (exited) container.
    @infra_task(retries=1, retry_delay=timedelta(seconds=40))
    def outlives_engine(value: int, try_number: int) -> int:
        import time

        if try_number == 1:
            print("sleeping until the engine goes", flush=True)
            time.sleep(600)
        return value + try_number

    outlives_engine(before())


infra_engine_loss()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_container_faults():
    # memory >= 512Mi: the batch rules of tests/test_faults.py send these to the batch target;
    # on the docker target it is just a limit.
    @infra_task(memory="512Mi")
    def exits_hard() -> None:
        import os

        print("about to exit", flush=True)
        os._exit(42)  # no outcome, no cleanup

    @infra_task(memory="512Mi", execution_timeout=timedelta(seconds=20))
    def overruns() -> None:
        import time

        print("sleeping past execution_timeout", flush=True)
        time.sleep(600)

    @infra_task(trigger_rule="all_done")
    def afterwards() -> int:
        return 7

    [exits_hard(), overruns()] >> afterwards()


infra_container_faults()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_docker_sleeper():
    @infra_task
    def sleeps() -> None:
        import time

        print("sleeping until killed", flush=True)
        time.sleep(600)

    sleeps()


infra_docker_sleeper()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_registry_down():
    @infra_task(memory="512Mi", packages=["six"])  # an image of its own, never built: the registry is down
    def needs_image() -> int:
        return 1

    @infra_task(trigger_rule="all_done")  # the rules send it to the local target
    def afterwards() -> int:
        return 7

    needs_image() >> afterwards()


infra_registry_down()
