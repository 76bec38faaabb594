"""Pods that fail in each way the kubernetes target explains (tests/test_kubernetes.py)."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_failures():
    @infra_task(target="k8s")
    def raises() -> None:
        raise ValueError("bad input on kubernetes")

    @infra_task(target="k8s", memory="64Mi")
    def oom() -> None:
        hog = bytearray(512 << 20)  # eight times the limit
        print(len(hog))

    @infra_task(target="k8s", timeout=3)
    def overruns() -> None:
        import time

        print("sleeping past the deadline", flush=True)
        time.sleep(120)

    @infra_task(target="k8s-unreachable")
    def unpullable() -> None:
        print("never runs")

    raises()
    oom()
    overruns()
    unpullable()


infra_kube_failures()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_sleeper():
    @infra_task(target="k8s")
    def sleeps() -> None:
        import time

        print("sleeping until killed", flush=True)
        time.sleep(600)

    sleeps()


infra_kube_sleeper()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_timeout():
    @infra_task(target="k8s", execution_timeout=dt.timedelta(seconds=20), retries=0)
    def overstays() -> None:
        import time

        print("overstaying", flush=True)
        time.sleep(600)

    overstays()


infra_kube_timeout()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_reattach():
    @infra_task(target="k8s")
    def slow() -> int:
        import time

        print("slow: started", flush=True)
        time.sleep(30)  # still running when the test restarts the try
        print("slow: done", flush=True)
        return 42

    slow()


infra_kube_reattach()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_startup():
    """Pods that never start, each for a reason only the cluster knows (no node has the GPUs;
    the image runs as root where the pod must not)."""

    @infra_task(target="k8s-quick", gpu=8)
    def gpu_hungry() -> None:
        print("never runs")

    @infra_task(target="k8s-nonroot")
    def rootless() -> None:
        print("never runs")

    gpu_hungry()
    rootless()


infra_kube_startup()


# `seconds`: how long the pod runs. The first run's pod is still running (being deleted) when
# the test starts the next run, which asks for a short one (`airflow tasks test -t`).
@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"], params={"seconds": Param(45, type="integer")})
def infra_kube_stubborn():
    @infra_task(target="k8s")
    def stubborn(seconds) -> str:
        import signal
        import time
        import uuid

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a pod that takes its whole grace period to die
        token = uuid.uuid4().hex
        print(f"stubborn: token {token}", flush=True)
        time.sleep(int(seconds))
        return token

    stubborn("{{ params.seconds }}")


infra_kube_stubborn()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_irsa():
    """A pod that reaches the artifact store the production way: no keys handed to it, only
    its service account's role (web identity, as on EKS)."""

    @infra_task(target="local")
    def numbers() -> list[int]:
        return [1, 2, 3]

    @infra_task(target="k8s-irsa")
    def total(values: list[int]) -> dict:
        import os

        return {"total": sum(values), "role": os.environ.get("AWS_ROLE_ARN"),
                "keys_given": sorted(k for k in os.environ if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))}

    total(numbers())


infra_kube_irsa()


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_kube_containers():
    """Pods that end by the kubelet's rules for more than one container, or for local disk:
    an eviction over `disk` (ephemeral-storage), an init container from the target's pod
    template that fails, a sidecar from a pod template that runs beside the call."""

    @infra_task(target="k8s", disk="64Mi")
    def fills_disk() -> None:
        import time

        with open("/tmp/filler", "wb") as sink:  # the container's writable layer: local disk
            for _ in range(160):
                sink.write(b"\0" * (1 << 20))
        print("wrote 160Mi to local disk", flush=True)
        time.sleep(60)  # evicted before this ends

    @infra_task(target="k8s-init")
    def after_init() -> None:
        print("never runs")

    @infra_task(target="k8s-sidecar")
    def beside_sidecar() -> int:
        return 7

    fills_disk()
    after_init()
    beside_sidecar()


infra_kube_containers()
