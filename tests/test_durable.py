"""Durable calls (airflow_infra/pipeline/durable.py) on their own: what is kept in the task
state store, what a later try makes of it, and hostile values in it. In-process, with the
test-only `fake` kind (tests/fake_kind) and a dict standing in for Airflow's state store
accessor (get/set/delete, as airflow.sdk.execution_time.context.TaskStateStoreAccessor).
The real runs, with a worker killed mid-call, are in tests/test_production_durable.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraTaskFailed
from airflow_infra.pipeline import durable
from airflow_infra.pipeline.execute import Execution
from airflow_infra.pipeline.package import write_meta
from airflow_infra.targets.contract import GONE, RUNNING, Handle
from tests.test_pipeline import LOG, package

pytestmark = pytest.mark.usefixtures("fake_kind")


class StateStore(dict):
    """The accessor's three methods over a dict."""

    def set(self, key, value, *, retention=None):
        self[key] = value

    def delete(self, key):
        self.pop(key, None)


def _config(tmp_path, **fake) -> InfraConfig:
    return InfraConfig.model_validate({
        "artifacts": f"file://{tmp_path}/store",
        "targets": {"f": {"kind": "fake", **fake}}, "rules": [{"target": "f"}],
    })


def _started(tmp_path, fn, state: StateStore, **fake):
    """Try 1: the call packaged, submitted and waited for, as the operator does, with the
    state store in its context, but never forgotten: as if its worker died right after."""
    cfg = _config(tmp_path, **fake)
    plan, packaged = package(tmp_path, fn, cfg=cfg)
    packaged.call.__dict__["context"] = {"task_state_store": state}  # frozen dataclass: as the operator builds it
    write_meta(packaged)
    execution = Execution(plan.runner(cfg), packaged.call)
    try:
        execution.start()
    except InfraTaskFailed:  # lose_outcome: the call ended without one
        pass
    return cfg, packaged, execution


def test_the_call_is_kept_as_soon_as_it_is_submitted(tmp_path):
    state = StateStore()
    _, packaged, execution = _started(tmp_path, lambda: 1, state)
    kept = state[durable.KEY]
    assert kept["try_number"] == 1 and kept["target"] == "f" and kept["folder"] == packaged.call.folder_uri
    assert Handle.from_json(kept["handle"]).id == execution.handle.id
    earlier = durable.recall({"task_state_store": state}, packaged.call.store, "d", "manual__1", "t", -1, LOG)
    assert earlier == durable.Earlier(1, "f", packaged.call.folder_uri, Handle.from_json(kept["handle"]))


def test_a_try_that_sees_its_call_end_forgets_it_and_one_that_defers_keeps_it(tmp_path):
    from airflow.sdk.exceptions import TaskDeferred

    state = StateStore({durable.KEY: {"x": 1}})
    with durable.until_the_call_ends({"task_state_store": state}):
        pass
    assert state == {}
    state[durable.KEY] = {"x": 1}
    with pytest.raises(KeyboardInterrupt), durable.until_the_call_ends({"task_state_store": state}):
        raise KeyboardInterrupt  # a signal unwinding the task: the call is killed, so forgotten too
    assert state == {}
    state[durable.KEY] = {"x": 1}
    with pytest.raises(TaskDeferred), durable.until_the_call_ends({"task_state_store": state}):
        raise TaskDeferred(trigger=None, method_name="execute_complete")
    assert durable.KEY in state


def test_without_a_state_store_calls_are_not_durable_and_the_log_says_so(tmp_path, caplog):
    from airflow_infra.artifacts import ArtifactStore

    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert durable.recall({}, ArtifactStore(f"file://{tmp_path}"), "d", "r", "t", -1, LOG) is None
    assert "Airflow gives no task state store to this task: if its worker dies, the next try runs the call again" in caplog.text
    durable.remember(SimpleNamespace(context={}), "f", Handle("fake", "f", "1", "x"))  # nothing to keep it in: no error
    durable.forget(None)


def _hostile(store_uri: str, good: dict) -> list:
    base = f"{store_uri}/d/manual__1/t/-1"
    handle = lambda folder: Handle("fake", "f", "1", folder).to_json()  # noqa: E731
    return [
        "a string", 42, [], {}, {**good, "folder": None},
        {**good, "try_number": "1"}, {**good, "target": 3}, {**good, "handle": "{not json"}, {**good, "handle": "{}"},
        {**good, "folder": f"{store_uri}/other_dag/manual__1/t/-1/1", "handle": handle(f"{store_uri}/other_dag/manual__1/t/-1/1")},
        {**good, "folder": f"{base}/1/../../../x", "handle": handle(f"{base}/1/../../../x")},
        {**good, "folder": f"{base}/1/deeper", "handle": handle(f"{base}/1/deeper")},
        {**good, "folder": f"{base}/", "handle": handle(f"{base}/")},
        {**good, "folder": f"{store_uri}/d/manual__1/t/0/1", "handle": handle(f"{store_uri}/d/manual__1/t/0/1")},  # another map index
        {**good, "handle": handle(f"{base}/2")},  # the handle names another folder than the record
        {**good, "handle": Handle("fake", "f", "1\nforged log line", f"{base}/1").to_json()},
        {**good, "handle": Handle("fake", "f", "", f"{base}/1").to_json()},
        {**good, "handle": Handle("fake", "f", "x" * 513, f"{base}/1").to_json()},
        {**good, "handle": json.dumps({**json.loads(good["handle"]), "id": 7})},
    ]


def test_a_state_store_value_that_is_not_ours_is_ignored_with_a_warning(tmp_path, caplog):
    state = StateStore()
    _, packaged, _ = _started(tmp_path, lambda: 1, state)
    good = dict(state[durable.KEY])
    store = packaged.call.store
    root = store.uri(store.root)
    for value in _hostile(root, good):
        state[durable.KEY] = value
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            assert durable.recall({"task_state_store": state}, store, "d", "manual__1", "t", -1, LOG) is None, value
        assert "ignoring the task state store's 'airflow_infra.call': not a call this task started" in caplog.text, value


def _take_over(cfg, state, try_number=2):
    """Try `try_number` of the same task instance, as InfraOperator.execute starts it."""
    from airflow.sdk import DAG

    from airflow_infra.operator import _RUN_AFRESH, InfraOperator
    from airflow_infra.pipeline.package import store_for

    with DAG("d", schedule=None):
        operator = InfraOperator(task_id="t", python_callable=lambda: "never run by the later try")
    context = {"run_id": "manual__1", "ti": SimpleNamespace(map_index=-1, try_number=try_number), "task_state_store": state}
    earlier = durable.recall(context, store_for(cfg), "d", "manual__1", "t", -1, LOG)
    assert earlier is not None
    answer = operator._take_over(cfg, context, earlier)
    return None if answer is _RUN_AFRESH else answer, answer is _RUN_AFRESH


def test_a_call_that_finished_after_its_worker_died_is_used_not_run_again(tmp_path, capsys):
    from airflow_infra_fake_kind import SUBMITTED

    state = StateStore()
    cfg, _, _ = _started(tmp_path, lambda: "the first try's result", state)
    submitted = len(SUBMITTED)
    value, afresh = _take_over(cfg, state)
    assert (value, afresh) == ("the first try's result", False)
    assert len(SUBMITTED) == submitted  # nothing submitted again
    said = capsys.readouterr().out
    assert "try 1's call (fake " in said and "finished after its worker was lost: using its result" in said
    assert durable.KEY not in state  # seen to its end: a clear, or a later try, runs afresh


def test_a_call_gone_without_a_result_runs_again(tmp_path, capsys):
    state = StateStore()
    cfg, _, _ = _started(tmp_path, lambda: 1, state, lose_outcome=True)
    value, afresh = _take_over(cfg, state)
    assert afresh and durable.KEY not in state
    said = capsys.readouterr().out
    assert "try 1's call (fake " in said and "is gone without a result after its worker was lost: running it again" in said


def test_a_call_that_failed_is_run_again_not_reused(tmp_path):
    def fails():
        raise ValueError("try 1 failed")

    state = StateStore()
    cfg, _, _ = _started(tmp_path, fails, state)
    assert _take_over(cfg, state)[1] is True


def test_the_local_kind_follows_only_a_process_its_own_scratch_folder_names(tmp_path):
    """A local call is found again through its scratch folder, whose marker this worker wrote:
    what the state store says (scratch, pid) never picks the process that is followed or killed."""
    import os
    import shutil
    import subprocess
    import tempfile

    from airflow_infra.targets import runner_for
    from airflow_infra.targets.local.processes import ProcessRef
    from airflow_infra.targets.local.runner import EARLIER, EarlierCall

    local = runner_for("local", InfraConfig())
    call = _call_for(folder_uri=str(tmp_path / "store" / "d" / "r" / "t" / "-1" / "1"))
    scratch = tempfile.mkdtemp(prefix="airflow-infra-")
    sleeper = subprocess.Popen(["sleep", "60"], cwd=scratch, start_new_session=True)
    try:
        process = ProcessRef.of(sleeper.pid)
        marker = {"folder": call.folder_uri, **process.as_details()}
        Path(scratch, EARLIER).write_text(json.dumps(marker))
        handle = Handle("local", "local", str(sleeper.pid), call.folder_uri, {"scratch": scratch})
        assert local.status(call, handle) == RUNNING
        assert EarlierCall.find(handle).process == process

        # Hostile handles: another folder, another scratch, no scratch, a scratch of the right
        # name that is not ours; and markers that are not ours.
        for details in ({}, {"scratch": "/etc"}, {"scratch": str(tmp_path)}, {"scratch": f"{scratch}/.."}, {"scratch": 7}):
            assert local.status(call, Handle("local", "local", "1", call.folder_uri, details)) == GONE, details
        other = Handle("local", "local", str(sleeper.pid), call.folder_uri[:-1] + "2", {"scratch": scratch})
        assert local.status(call, other) == GONE
        for bad in ("not json", json.dumps([1]), json.dumps({**marker, "pid": "1"}), json.dumps({**marker, "pid": 1}),
                    json.dumps({**marker, "start": -1}), json.dumps({**marker, "boot": "another boot"}),
                    json.dumps({**marker, "folder": "s3://elsewhere"}), json.dumps({**marker, "pid": True})):
            Path(scratch, EARLIER).write_text(bad)
            assert local.status(call, handle) == GONE, bad
        # The very pid with another start time: a reused pid is never taken for the call.
        Path(scratch, EARLIER).write_text(json.dumps({**marker, "start": process.start + 1}))
        assert local.status(call, handle) == GONE
        assert not ProcessRef(sleeper.pid, process.start + 1, process.boot).alive

        # Killing through a handle whose marker names another process kills nothing.
        local.kill(handle)
        assert sleeper.poll() is None
        # Through its own marker: the whole group, once.
        Path(scratch, EARLIER).write_text(json.dumps(marker))
        fresh = runner_for("local", InfraConfig())
        fresh.kill(handle)
        assert sleeper.wait(10) == -9
        assert not process.alive and fresh.status(call, handle) == GONE  # gone, and no exit was kept
        Path(scratch, ".exit.json").write_text(json.dumps({"exit": 0, "timed_out": False}))
        assert fresh.status(call, handle) == RUNNING  # it ended since: following it collects what it left
        os.chown(scratch, 65534, 65534)  # the right name, another user's folder
        assert runner_for("local", InfraConfig()).status(call, handle) == GONE
    finally:
        sleeper.kill()
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_stored_cgroup_is_released_only_when_it_is_a_calls_cgroup_here():
    from airflow_infra.targets.local import cgroups

    try:
        hierarchies = cgroups.locate(Path("/sys/fs/cgroup"), None)
    except (cgroups.Unenforced, OSError) as exc:
        pytest.skip(f"no cgroups to place calls in here: {exc}")
    parent = hierarchies.parents["memory"]
    good = {"version": hierarchies.version, "dirs": {"memory": str(parent / f"{cgroups.PREFIX}123-0123456789ab")}}
    assert cgroups.reopen("/sys/fs/cgroup", None, good).dirs == {"memory": parent / f"{cgroups.PREFIX}123-0123456789ab"}
    for bad in (None, [], {"version": 3, "dirs": good["dirs"]}, {"version": hierarchies.version},
                {"version": hierarchies.version, "dirs": {"memory": str(parent)}},
                {"version": hierarchies.version, "dirs": {"memory": "/sys/fs/cgroup/memory/docker"}},
                {"version": hierarchies.version, "dirs": {"memory": str(parent / "system.slice")}},
                {"version": hierarchies.version, "dirs": {"memory": str(parent / f"{cgroups.PREFIX}1-0123456789ab" / "..")}},
                {"version": hierarchies.version, "dirs": {"memory": str(parent / "x" / f"{cgroups.PREFIX}1-0123456789ab")}},
                {"version": hierarchies.version, "dirs": {"pids": str(parent / f"{cgroups.PREFIX}1-0123456789ab")}},
                {"version": hierarchies.version, "dirs": {"memory": 7}}):
        assert cgroups.reopen("/sys/fs/cgroup", None, bad) is None, bad


def test_a_record_naming_a_target_infra_yaml_no_longer_has_runs_the_call_afresh(tmp_path, capsys):
    state = StateStore()
    cfg, _, _ = _started(tmp_path, lambda: 1, state)
    renamed = _config(tmp_path)
    renamed.targets["elsewhere"] = renamed.targets.pop("f")
    state[durable.KEY] = {**state[durable.KEY], "target": "f"}
    assert _take_over(renamed, state)[1] is True and durable.KEY not in state
    assert "which infra.yaml or the store no longer has: running the call afresh" in capsys.readouterr().out


# -- what each kind follows: only this task instance's own call, whatever the state store says --


def _call_for(store_local: bool = True, folder_uri: str = "s3://aws_default@b/p/d/r/t/-1/1"):
    return SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1, folder_uri=folder_uri,
                           store=SimpleNamespace(is_local=store_local), log=LOG)


def test_docker_follows_only_this_task_instances_container_and_scratch_folder(tmp_path):
    import os
    import tempfile

    from airflow_infra.targets.docker import runner as docker_runner
    from airflow_infra.targets import staging

    call = _call_for()
    mine = {"org.airflow-infra.ti": docker_runner.task_instance_key(call)}
    containers = {"mine": SimpleNamespace(labels=mine), "theirs": SimpleNamespace(labels={"org.airflow-infra.ti": "0" * 32})}
    runner = docker_runner.DockerRunner("docker", SimpleNamespace(kind="docker"), InfraConfig())

    class Engine:
        class containers:  # noqa: N801 - docker-py's shape
            @staticmethod
            def get(container_id):
                import docker.errors

                if container_id not in containers:
                    raise docker.errors.NotFound("no such container")
                return containers[container_id]

    runner._engine = Engine()
    assert runner.status(call, Handle("docker", "docker", "mine", call.folder_uri)) == RUNNING
    assert runner.status(call, Handle("docker", "docker", "theirs", call.folder_uri)) == GONE
    assert runner.status(call, Handle("docker", "docker", "missing", call.folder_uri)) == GONE

    # A remote store's call is followed only with a scratch folder this user made in the temp folder.
    remote = _call_for(store_local=False)
    scratch = tempfile.mkdtemp(prefix="airflow-infra-")
    try:
        assert staging.own_scratch(scratch) is not None
        assert runner.status(remote, Handle("docker", "docker", "mine", call.folder_uri, {"scratch": scratch})) == RUNNING
        link = os.path.join(tempfile.gettempdir(), f"airflow-infra-link{os.getpid()}")
        os.symlink(str(tmp_path), link)
        hostile = ["/etc", "/", str(tmp_path), link, f"{scratch}/..", f"{tempfile.gettempdir()}/airflow-infra-x/../../etc",
                   f"{tempfile.gettempdir()}/not-ours", None, 7, f"{scratch}\n"]
        for value in hostile:
            assert staging.own_scratch(value) is None, value
            assert runner.status(remote, Handle("docker", "docker", "mine", call.folder_uri, {"scratch": value})) == "ended", value
        os.unlink(link)
        os.chown(scratch, 65534, 65534)  # another user's folder of the right name
        assert staging.own_scratch(scratch) is None
    finally:
        os.rmdir(scratch)


def test_batch_follows_only_a_job_that_runs_this_very_call():
    from airflow_infra.targets.batch import BatchTarget
    from airflow_infra.targets.batch.runner import BatchRunner

    call = _call_for()
    described = {
        "mine": {"status": "RUNNING", "container": {"command": [f"{call.folder_uri}/call.pkl", call.folder_uri]}},
        "done": {"status": "SUCCEEDED", "container": {"command": [f"{call.folder_uri}/call.pkl", call.folder_uri]}},
        "theirs": {"status": "RUNNING", "container": {"command": ["s3://aws_default@b/p/other/r/t/-1/1/call.pkl", "x"]}},
        "bare": {"status": "RUNNING"},
    }
    runner = BatchRunner("batch", BatchTarget(kind="batch", job_queue="q"), InfraConfig())
    client = SimpleNamespace(describe_jobs=lambda jobs: {"jobs": [described[j] for j in jobs if j in described]})
    runner._batch_hook = lambda: SimpleNamespace(client=client)
    states = {job: runner.status(call, Handle("batch", "batch", job, call.folder_uri)) for job in [*described, "missing"]}
    assert states == {"mine": RUNNING, "done": "ended", "theirs": GONE, "bare": GONE, "missing": GONE}


def test_kubernetes_follows_only_a_pod_of_its_namespace_writing_this_very_call():
    from kubernetes.client import models as k8s
    from kubernetes.client.exceptions import ApiException

    from airflow_infra.targets.kubernetes import KubernetesTarget
    from airflow_infra.targets.kubernetes.podspec import TASK_DIR_ANNOTATION
    from airflow_infra.targets.kubernetes.runner import KubernetesRunner

    call = _call_for()

    def pod(folder, phase="Running", deleting=None):
        return k8s.V1Pod(metadata=k8s.V1ObjectMeta(annotations={TASK_DIR_ANNOTATION: folder}, deletion_timestamp=deleting),
                         status=k8s.V1PodStatus(phase=phase))

    pods = {("ml", "mine"): pod(call.folder_uri), ("ml", "done"): pod(call.folder_uri, "Succeeded"),
            ("ml", "dying"): pod(call.folder_uri, deleting="2026-11-30T00:00:00Z"), ("ml", "theirs"): pod("s3://aws_default@b/p/x/r/t/-1/1"),
            ("other", "mine"): pod(call.folder_uri)}
    asked = []

    def read_namespaced_pod(name, namespace):
        asked.append(namespace)
        if (namespace, name) not in pods:
            raise ApiException(status=404)
        return pods[namespace, name]

    runner = KubernetesRunner("k8s", KubernetesTarget(kind="kubernetes", namespace="ml"), InfraConfig())
    runner._client = lambda: SimpleNamespace(read_namespaced_pod=read_namespaced_pod)
    states = {name: runner.status(call, Handle("kubernetes", "k8s", name, call.folder_uri, {"namespace": "other"}))
              for name in ("mine", "done", "dying", "theirs", "missing")}
    assert states == {"mine": RUNNING, "done": "ended", "dying": GONE, "theirs": GONE, "missing": GONE}
    assert set(asked) == {"ml"}  # the handle's namespace is not believed: the target's is asked


# -- SIGTERM: a worker shutting down leaves the call running; a stopped task kills it ---------


class _Runner:
    """Records the verbs called; its wait raises what on_kill would raise into it."""

    name, kind = "f", "fake"

    def __init__(self, raises: BaseException):
        self.raises, self.called = raises, []

    def wait(self, call, handle):
        raise self.raises

    def kill(self, handle):
        self.called.append("kill")

    def collect(self, call, handle):
        self.called.append("collect")

    def detach(self, handle):
        self.called.append("detach")
        return True


def test_a_call_left_running_is_neither_killed_nor_collected_nor_forgotten():
    state = StateStore({durable.KEY: {"x": 1}})
    call = SimpleNamespace(durable=True, context={"task_state_store": state}, where="d.t", log=LOG)
    left = durable.CallLeftRunning("left running")
    runner = _Runner(left)
    execution = Execution(runner, call, Handle("fake", "f", "1", "x"))
    assert not execution.detachable  # not being waited for
    with pytest.raises(durable.CallLeftRunning), durable.until_the_call_ends(call.context):
        execution.follow()
    assert runner.called == [] and durable.KEY in state

    # A library's cleanup raising over it (the pod operator's `finally`) changes nothing.
    try:
        try:
            raise left
        finally:
            raise RuntimeError("cleanup failed")  # noqa: B012
    except RuntimeError as over:
        runner.raises = over
    with pytest.raises(durable.CallLeftRunning):
        execution.follow()
    assert runner.called == []

    # Anything else unwinding the task (a timeout, a plain SIGTERM's exception) kills and collects.
    runner.raises = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt), durable.until_the_call_ends(call.context):
        execution.follow()
    assert runner.called == ["kill", "collect"] and durable.KEY not in state


def _ti(try_number=1, max_tries=2, map_index=-1):
    return SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=map_index, try_number=try_number, max_tries=max_tries)


@pytest.mark.parametrize(("answer", "expected"), [
    ({"r": {"t": "running"}}, True),
    ({"r": {"t": "failed"}}, False),  # marked failed in the UI: the supervisor stops the task
    ({"r": {"t": "success"}}, False),
    ({"r": {"t": None}}, False),  # cleared
    ({"r": {"t": "up_for_retry"}}, False),  # missed heartbeats: the next try already runs it afresh
    ({}, False),
])
def test_a_sigterm_leaves_the_call_running_only_while_airflow_still_runs_the_task(monkeypatch, answer, expected):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked = []
    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(lambda **kw: asked.append(kw) or answer))
    context = {"ti": _ti(), "task_state_store": StateStore()}
    assert durable.shutting_down(context, LOG) is expected
    assert asked == [{"dag_id": "d", "task_ids": ["t"], "run_ids": ["r"], "map_index": -1}]


def test_a_mapped_index_is_asked_about_by_its_own_key(monkeypatch):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(lambda **kw: {"r": {"t_3": "running", "t_4": "failed"}}))
    assert durable.shutting_down({"ti": _ti(map_index=3), "task_state_store": StateStore()}, LOG) is True
    assert durable.shutting_down({"ti": _ti(map_index=4), "task_state_store": StateStore()}, LOG) is False


def test_without_a_retry_left_or_an_answer_the_call_is_killed_as_before(monkeypatch, caplog):
    import threading

    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked = []
    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(lambda **kw: asked.append(kw) or {"r": {"t": "running"}}))
    assert durable.shutting_down({"ti": _ti(try_number=3, max_tries=2), "task_state_store": StateStore()}, LOG) is False
    assert durable.shutting_down({"ti": _ti()}, LOG) is False  # no state store: the next try could not find it
    assert asked == []

    def broken(**kw):
        raise ConnectionError("supervisor gone")

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(broken))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert durable.shutting_down({"ti": _ti(), "task_state_store": StateStore()}, LOG) is False
    assert "could not ask Airflow whether this task still runs (supervisor gone): stopping its call" in caplog.text

    never = threading.Event()  # a request lock held by the very thread the signal interrupted
    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(lambda **kw: never.wait()))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert durable.shutting_down({"ti": _ti(), "task_state_store": StateStore()}, LOG, within=0.2) is False
    assert "no answer within 0.2s" in caplog.text
    never.set()
