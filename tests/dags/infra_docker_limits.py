"""Container limits and a clean image on the docker target (tests/test_images.py)."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra-tests"])
def infra_docker_limits():
    @infra_task(shm="64Mi", cpu=0.5, memory="256Mi")
    def shm_size() -> int:
        import os

        stat = os.statvfs("/dev/shm")
        return stat.f_blocks * stat.f_frsize

    @infra_task(memory="128Mi")
    def oom() -> int:
        blocks = [bytearray(32 << 20) for _ in range(20)]  # 640 MiB, touched
        return len(blocks)

    @infra_task
    def whoami() -> dict:
        import importlib.util
        import os

        return {
            "uid": os.getuid(),
            "airflow": importlib.util.find_spec("airflow") is not None,
            "env": sorted(k for k in os.environ if k.startswith(("AIRFLOW", "AWS"))),
        }

    shm_size()
    oom()
    whoami()


infra_docker_limits()
