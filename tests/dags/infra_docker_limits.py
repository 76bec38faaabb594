"""Container limits and a clean image on the docker target (tests/test_images.py)."""

from __future__ import annotations

import datetime as dt

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

    # OOM escalation on a real container: try 1 is killed at 64Mi (State.OOMKilled), try 2 runs with 128Mi.
    @infra_task(memory="64Mi", on_oom="double", retries=1, retry_delay=dt.timedelta(0))
    def oom_grows() -> int:
        return len(bytearray(90 << 20))

    # A planted secret (tests/conftest.py): it reaches the call, and no layer or stored file.
    @infra_task(env={"API_TOKEN": "{{ var.value.planted_api_token }}"})
    def whoami() -> dict:
        import importlib.util
        import os

        return {
            "uid": os.getuid(),
            "airflow": importlib.util.find_spec("airflow") is not None,
            "env": sorted(k for k in os.environ if k.startswith(("AIRFLOW", "AWS"))),
            "token_arrived": os.environ.get("API_TOKEN", "").startswith("planted-env-"),
        }

    @infra_task
    def big() -> bytes:
        return b"x" * (2 << 20)  # over xcom_max_bytes: it stays in the store, XCom carries a reference

    @infra_task
    def reach(blob: bytes) -> dict:
        """What the container can do to the store outside its own call's folder."""
        import os
        import sys

        folder = os.path.dirname(next(a for a in sys.argv if a.endswith("call.pkl")))
        root = folder
        for _ in range(5):  # {root}/{dag}/{run}/{task}/{map_index}/{try}
            root = os.path.dirname(root)
        upstream = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(folder))), "big", "-1", "1")

        def attempt(action) -> str:
            try:
                action()
            except OSError as exc:
                return type(exc).__name__
            return "allowed"

        def listing() -> list:
            return sorted(os.listdir(root))

        return {
            "input_bytes": len(blob),
            "write_own": attempt(lambda: open(os.path.join(folder, "mine.txt"), "w").close()),
            "root_listing": listing(),
            "read_other": attempt(lambda: open(os.path.join(root, "other_dag", "secret.txt")).read()),
            "write_other": attempt(lambda: open(os.path.join(root, "other_dag", "secret.txt"), "w").write("overwritten")),
            "write_root": attempt(lambda: open(os.path.join(root, "planted.txt"), "w").close()),
            "write_upstream": attempt(lambda: open(os.path.join(upstream, "planted.txt"), "w").close()),
            "overwrite_input": attempt(lambda: open(os.path.join(upstream, "out-0.pkl"), "r+b").close()),
        }

    shm_size()
    oom()
    oom_grows()
    whoami()
    reach(big())


infra_docker_limits()
