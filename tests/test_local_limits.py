"""The local target enforces `memory` and `cpu` with a cgroup per call (cgroups.py), and says
so in one line where it cannot. Real calls through the pipeline (plan, package, the local
runner's warm server, the kernel's cgroups): no `airflow dags test`, a few seconds in all.

Needs a writable cgroup filesystem (root on these machines, cgroup v1)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from airflow_infra.artifacts import ArtifactStore
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.pipeline.decode import decode, read_outcome
from airflow_infra.pipeline.execute import Execution
from airflow_infra.pipeline.package import package_call, write_meta
from airflow_infra.pipeline.plan import plan_call
from airflow_infra.targets.local import cgroups
from tests.test_local_server import gone

pytestmark = pytest.mark.integration

LOG = logging.getLogger("test_local_limits")


class Lines(logging.Handler):
    """The task log's records, as the runner wrote them (Airflow's log set-up reformats and
    reroutes the standard ones, so caplog does not see them)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@pytest.fixture(autouse=True, scope="module")
def no_warm_server_outlives_the_module():
    """The calls here run through warm runtime servers this (pytest's) process starts; later
    tests count the processes of the session's home, so they go when the module ends."""
    yield
    from airflow_infra.targets.local import server

    for python in list(server._servers):
        server.forget(python)


@pytest.fixture
def task_log():
    handler = Lines()
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    yield handler
    LOG.removeHandler(handler)


def local_execution(tmp_path: Path, fn, declared: dict, local: dict | None = None) -> tuple[Execution, dict]:
    cfg = InfraConfig.model_validate({"targets": {"local": {"kind": "local", **(local or {})}}})
    store = ArtifactStore(f"file://{tmp_path}/store")
    plan = plan_call(declared, "local", cfg, dag_id="d", task_id="t", dag_file=None)
    packaged = package_call(
        plan, fn, [], {}, store=store, config=cfg, run_id=f"r{os.urandom(4).hex()}", map_index=-1, try_number=1,
        multiple_outputs=False, dag_file=None, log=LOG, context=None,
    )
    write_meta(packaged)
    return Execution(plan.runner(cfg), packaged.call), packaged


def run_local(tmp_path: Path, fn, declared: dict, local: dict | None = None):
    """Run `fn` on the local target with these declared resources; its result, or InfraTaskFailed."""
    execution, packaged = local_execution(tmp_path, fn, declared, local)
    store = packaged.call.store
    assert execution.start() is None
    folder = execution.outcome_folder
    outcome = read_outcome(store, folder, "here")
    return decode(store, folder, outcome, requested=packaged.meta["resources"], multiple_outputs=False, log=LOG, where="here")


def left_behind() -> list[Path]:
    """This worker's calls' cgroups still present."""
    return cgroups.leftovers(cgroups.locate(Path("/sys/fs/cgroup"), None), os.getpid())


def allocate_256mib() -> int:
    block = bytearray(256 << 20)  # zero-filled: every page touched
    return len(block)


def allocate_16mib() -> int:
    return len(bytearray(16 << 20))


def read_cpu_quota() -> str:
    """The call's own cgroup's CPU quota, as the call sees it (v1 or v2)."""
    for line in open("/proc/self/cgroup").read().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
            return f"{(folder / 'cpu.cfs_quota_us').read_text().strip()}/{(folder / 'cpu.cfs_period_us').read_text().strip()}"
        if controllers == "" and path != "/":
            return (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().strip()
    return "none"


def test_over_the_memory_limit_is_killed_and_reported_as_out_of_memory(tmp_path, task_log):
    with pytest.raises(InfraTaskFailed) as failed:
        run_local(tmp_path, allocate_256mib, {"memory": "64Mi"})
    message = str(failed.value)
    assert "DAG 'd', task 't': out of memory: the task hit its memory limit of 64Mi and was killed" in message
    assert "oom_kill=" in message and "raise `memory`" in message
    assert len(task_log.matching("limits enforced by cgroup")) == 1
    assert left_behind() == []


def test_within_the_memory_limit_succeeds_and_the_cpu_quota_is_the_calls(tmp_path):
    assert run_local(tmp_path, allocate_16mib, {"memory": "64Mi"}) == 16 << 20
    assert run_local(tmp_path, read_cpu_quota, {"cpu": 0.5, "memory": "128Mi"}) in ("50000/100000", "50000 100000")
    assert left_behind() == []


def test_a_timed_out_call_leaves_no_cgroup_and_nothing_it_started(tmp_path):
    pid_file = str(tmp_path / "escaped.pid")

    def escape_and_sleep():
        import subprocess
        import time

        # A process outside the call's process group: only its cgroup still holds it.
        escaped = subprocess.Popen(["sleep", "300"], start_new_session=True)
        with open(pid_file, "w") as fh:
            fh.write(str(escaped.pid))
        time.sleep(300)

    with pytest.raises(InfraTaskFailed, match=r"timed out after 1s \(timeout=1s\)"):
        # 1s, not 1s + the output's grace period: the escaped sleep holding the output open
        # is killed with the cgroup as soon as the call has ended.
        run_local(tmp_path, escape_and_sleep, {"memory": "64Mi", "cpu": 1, "timeout": 1})
    assert left_behind() == []
    assert gone(int(Path(pid_file).read_text()))


def test_a_killed_call_leaves_no_cgroup(tmp_path):
    import threading
    import time

    def sleep_long():
        time.sleep(300)

    execution, _ = local_execution(tmp_path, sleep_long, {"memory": "64Mi"})
    ended = {}

    def start() -> None:
        try:
            execution.start()
        except InfraTaskFailed as exc:
            ended["error"] = str(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    until = time.monotonic() + 30
    while not (left_behind() and execution.handle is not None and execution.handle.id):  # the call is running in its cgroup
        assert time.monotonic() < until, "the call never started"
        time.sleep(0.05)
    execution.kill()  # as Airflow's on_kill does
    thread.join(30)
    assert "the task was killed" in ended.get("error", ""), ended
    assert left_behind() == []


def test_a_dead_workers_empty_cgroups_are_swept_by_the_next_call(tmp_path):
    hierarchies = cgroups.locate(Path("/sys/fs/cgroup"), None)
    gone_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
    stale = hierarchies.parents["memory"] / f"{cgroups.PREFIX}{gone_pid}-0123456789ab"
    stale.mkdir()
    try:
        assert run_local(tmp_path, allocate_16mib, {"memory": "64Mi"}) == 16 << 20
        assert not stale.exists()
    finally:
        if stale.exists():
            stale.rmdir()


def test_without_a_cgroup_filesystem_limits_are_not_enforced_and_the_log_says_why_once(tmp_path, task_log):
    nowhere = tmp_path / "no-cgroups-here"
    nowhere.mkdir()
    # Runs unlimited, as before: 256 MiB against 64Mi succeeds (and the hint says so afterwards).
    assert run_local(tmp_path, allocate_256mib, {"memory": "64Mi"}, {"cgroup_root": str(nowhere)}) == 256 << 20
    lines = task_log.matching("limits not enforced")
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert f"no cgroup filesystem with the memory controller is mounted at {nowhere}" in lines[0].getMessage()
    assert "memory=64Mi" in lines[0].getMessage()


def test_a_cgroup_v2_mount_without_the_memory_controller_is_a_logged_fallback(tmp_path, task_log):
    """This machine's hybrid layout has an empty cgroup v2 mount: a real v2 hierarchy with no
    controllers, so the v2 code's refusal runs against the kernel."""
    unified = Path("/sys/fs/cgroup/unified")
    if not (unified / "cgroup.controllers").exists():
        pytest.skip("no empty cgroup v2 mount here")
    assert run_local(tmp_path, allocate_16mib, {"memory": "64Mi"}, {"cgroup_root": str(unified)}) == 16 << 20
    lines = [r.getMessage() for r in task_log.matching("limits not enforced")]
    assert len(lines) == 1 and "the memory controller is not available in /sys/fs/cgroup/unified" in lines[0], lines
    assert cgroups.leftovers(cgroups.locate(unified, None), os.getpid()) == []

