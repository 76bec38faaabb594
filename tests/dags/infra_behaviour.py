"""Test DAGs for the local target's behaviour (run by tests/test_local_target.py)."""

from __future__ import annotations

import os
import sys
import time

from airflow.sdk import dag, task
from infra_helpers import shout

from airflow_infra import Environment, InfraOperator, Resources, infra_task

GREETING = "hello"


def decorate(text: str) -> str:
    """A helper defined in the DAG file itself."""
    return f"<{text}>"


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_behaviour():
    @infra_task(packages=["six==1.16.0"], env={"MODE": "test"})
    def produce(map_index: int = -1) -> dict:
        import six

        print("to stdout: producing")
        print("to stderr: still producing", file=sys.stderr)
        return {
            "text": decorate(shout(GREETING)),
            "six": six.__version__,
            "mode": os.environ["MODE"],
            "airflow_env": sorted(k for k in os.environ if k.startswith("AIRFLOW")),
            "map_index": map_index,
            "tuple": (1, 2),
        }

    @infra_task(requirements="reqs/six.txt")
    def from_requirements() -> str:
        import six

        return six.__version__

    @infra_task(multiple_outputs=True, environment=Environment(packages=["six==1.17.0"]), resources=Resources(cpu=0.5))
    def split() -> dict:
        import six

        return {"left": 1, "right": six.__version__}

    @task
    def plain_consumer(produced: dict, right: str, six_from_file: str) -> str:
        # An ordinary @task downstream gets the plain values through XCom.
        assert produced["text"] == "<HELLO!>", produced
        assert right == "1.17.0" and six_from_file == "1.16.0", (right, six_from_file)
        return "ok"

    parts = split()
    plain_consumer(produce(), parts["right"], from_requirements())


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_failure():
    @infra_task
    def explode(depth: int) -> None:
        def inner():
            raise ValueError(f"boom {depth}")

        inner()

    explode(42)


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_timeout():
    @infra_task(timeout=2)
    def sleepy() -> None:
        import time

        time.sleep(60)

    sleepy()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_process_deaths():
    @infra_task
    def kill_own_runtime() -> None:
        import signal

        os.kill(os.getppid(), signal.SIGKILL)  # the warm runtime this call was forked from
        time.sleep(30)

    @infra_task(memory="256Mi")  # in a memory cgroup: a SIGKILL there is still not an OOM kill
    def killed_by_signal() -> None:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does

    @infra_task
    def exits_hard() -> None:
        os._exit(42)  # no outcome, no cleanup

    @infra_task(trigger_rule="all_done")
    def afterwards() -> int:
        return 7

    [kill_own_runtime(), killed_by_signal(), exits_hard()] >> afterwards()


def memory_hungry(size: str) -> str:
    return size


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_mapped_resources():
    # Classic-operator mapping over a resource: each map index is routed on its own value.
    InfraOperator.partial(task_id="sized", python_callable=memory_hungry, op_args=["x"]).expand(memory=["256Mi", "2Gi"])


infra_behaviour()
infra_failure()
infra_timeout()
infra_process_deaths()
infra_mapped_resources()
