"""The artifact store's integrity boundary: nothing is read from outside the configured store,
whatever a reference, a cache entry, an outcome or a stored handle says (any task can write
XCom and the store), and one broken entry affects only itself."""

from __future__ import annotations

import json
import os
import logging
import pickle

import pytest

from airflow_infra.artifacts import CACHE_DIR, REF_KEY, ArtifactStore, make_ref
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraStoreError
from airflow_infra.pipeline import cache
from airflow_infra.pipeline.package import package_call
from airflow_infra.pipeline.plan import plan_call

LOG = logging.getLogger("test_store_integrity")


@pytest.fixture
def store(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store-evil").mkdir()
    (tmp_path / "store-evil" / "x.pkl").write_bytes(pickle.dumps("stolen"))
    return ArtifactStore(f"file://{tmp_path}/store")


def outside(tmp_path) -> list:
    root = f"file://{tmp_path}/store"
    return [
        f"file://{tmp_path}/store-evil/x.pkl",  # a sibling that shares the root's prefix
        f"{root}/../store-evil/x.pkl",
        f"{root}/d/../../store-evil/x.pkl",
        f"{root}/./d/x.pkl",
        f"{root}//x.pkl",
        f"{root}/",
        root,
        f"{tmp_path}/store/d/x.pkl",  # a plain path, without the store's scheme
        "/etc/passwd",
        "d/x.pkl",
        "s3://another-bucket/d/x.pkl",
        "file:///etc/passwd",
        f"{root}/d/x\0.pkl",
        None,
        42,
        {"uri": root},
    ]


def test_the_store_refuses_every_location_outside_it(store, tmp_path):
    assert store.path(f"{store.url}/d/r/t/-1/1/out-0.pkl") == store.root / "d/r/t/-1/1/out-0.pkl"
    for uri in outside(tmp_path):
        with pytest.raises(InfraStoreError, match="not a location inside the artifact store"):
            store.path(uri)


@pytest.mark.parametrize("name", ["../../x.pkl", "a/b", "", ".", "..", None, 3, "/etc/passwd", "x\n"])
def test_an_outcome_cannot_name_a_file_outside_its_calls_folder(store, name):
    with pytest.raises(InfraStoreError, match="not a file of its call's folder"):
        store.output_path(store.root / "d/r/t/-1/1", {"key": "return_value", "file": name})
    assert store.output_path(store.root / "d", {"file": "out-0.pkl"}) == store.root / "d/out-0.pkl"


def test_the_xcom_backend_loads_only_from_the_configured_store(tmp_path, monkeypatch):
    from airflow_infra.xcom import InfraXComBackend

    home = tmp_path / "home"
    (home / "infra").mkdir(parents=True)
    (home / "infra.yaml").write_text(f"artifacts: file://{tmp_path}/store\n")
    monkeypatch.setenv("AIRFLOW__INFRA__CONFIG_FILE", str(home / "infra.yaml"))
    inside = tmp_path / "store" / "d" / "out-0.pkl"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(pickle.dumps({"rows": 3}))
    (tmp_path / "secret.pkl").write_bytes(pickle.dumps("another DAG's result"))
    good = {"a": [make_ref(f"file://{tmp_path}/store/d/out-0.pkl", "dict", 10)]}
    assert InfraXComBackend.deserialize_value(_stored(good)) == {"a": [{"rows": 3}]}
    for uri in (f"file://{tmp_path}/secret.pkl", f"file://{tmp_path}/store/../secret.pkl"):
        with pytest.raises(InfraStoreError):
            InfraXComBackend.deserialize_value(_stored({REF_KEY: uri, "type": "str", "bytes": 1}))


def _stored(value):
    class Row:  # what BaseXCom.deserialize_value reads: the value as serde serialized it
        pass

    from airflow.sdk.serde import serialize

    row = Row()
    row.value = serialize(value)
    return row


def test_a_reference_in_the_arguments_outside_the_store_fails_before_anything_runs(store, tmp_path):
    cfg = InfraConfig()
    plan = plan_call({}, "local", cfg, dag_id="d", task_id="t", dag_file=None)
    forged = make_ref(f"file://{tmp_path}/store-evil/x.pkl", "str", 10)
    with pytest.raises(InfraStoreError, match="DAG 'd', task 't': an argument's artifact reference"):
        package_call(
            plan, lambda x: x, [{"nested": [forged]}], {}, store=store, config=cfg, run_id="r", map_index=-1,
            try_number=1, multiple_outputs=False, dag_file=None, log=LOG, context=None,
        )
    assert not any((tmp_path / "store").rglob("call.pkl"))  # nothing was packaged


@pytest.mark.parametrize(
    "entry",
    [
        "{not json",
        "[]",
        json.dumps({"task_dir": "file:///etc"}),
        json.dumps({"task_dir": None}),
        json.dumps({"no_task_dir": 1}),
    ],
)
def test_a_broken_or_foreign_cache_entry_is_a_miss_not_a_failure(store, tmp_path, entry, caplog):
    key = "ab" * 32
    (tmp_path / "store" / CACHE_DIR).mkdir()
    (tmp_path / "store" / CACHE_DIR / f"{key}.json").write_text(entry)
    meta: dict = {}
    with caplog.at_level(logging.WARNING):
        assert cache.serve(store, store.root / "d/r/t/-1/1", meta, key, LOG) is None
    assert meta["cache"] == {"key": key, "hit": False}
    assert "cache entry abababababab ignored" in caplog.text


def test_a_cache_entry_whose_outputs_lead_out_of_the_store_is_a_miss(store, tmp_path, caplog):
    key = "cd" * 32
    source = tmp_path / "store" / "d" / "r" / "t" / "-1" / "1"
    source.mkdir(parents=True)
    (source / "outcome.json").write_text(json.dumps({"ok": True, "outputs": [{"key": "return_value", "uri": "file:///etc/passwd"}]}))
    (tmp_path / "store" / CACHE_DIR).mkdir()
    (tmp_path / "store" / CACHE_DIR / f"{key}.json").write_text(json.dumps({"task_dir": f"{store.url}/d/r/t/-1/1"}))
    with caplog.at_level(logging.WARNING):
        assert cache.serve(store, store.root / "d/r2/t/-1/1", {}, key, LOG) is None
    assert "not a location inside the artifact store" in caplog.text


def _call(root, dag, run, task, index="-1", attempt="1", *, at="2026-01-01T00:00:00", ok=True):
    folder = root / dag / run / task / index / attempt
    folder.mkdir(parents=True)
    meta = {
        "dag_id": dag, "task_id": task, "run_id": run, "map_index": int(index), "try_number": int(attempt.split("-")[0]),
        "target": "local", "resources": {}, "environment": {}, "environment_hash": "h", "submitted_at": at,
    }
    (folder / "call.json").write_text(json.dumps(meta))
    (folder / "out-0.pkl").write_bytes(pickle.dumps(7))
    outcome = {"ok": ok, "outputs": [{"key": "return_value", "file": "out-0.pkl"}], "metrics": {"wall_seconds": 1}}
    (folder / "outcome.json").write_text(json.dumps(outcome))
    return folder


def test_broken_or_foreign_folders_affect_only_themselves(tmp_path, capsys):
    from airflow_infra import cli
    from airflow_infra.client import Client

    root = tmp_path / "store"
    _call(root, "d", "good_1", "t", at="2026-01-01T00:00:01")
    _call(root, "d", "good_2", "t", at="2026-01-01T00:00:02")
    _call(root, "_cache", "r", "t")  # a DAG named like a store folder of old
    (root / "d" / "stray.txt").write_text("not a run")  # a stray file among runs
    (root / "d" / "empty_run").mkdir()  # a worker killed before it wrote anything
    half = _call(root, "d", "half", "t", at="2026-01-01T00:00:03")
    (half / "call.json").write_text('{"dag_id": "d", "task_id"')  # cut short
    (half / "outcome.json").unlink()
    foreign = _call(root, "d", "good_2", "u", at="2026-01-01T00:00:04")
    (foreign / "call.json").write_text(json.dumps(["not", "a", "record"]))
    bad_outcome = _call(root, "d", "good_2", "v", at="2026-01-01T00:00:05")
    (bad_outcome / "outcome.json").write_text("\xff garbage")
    (root / "d" / "good_1" / "t" / "not-an-index").mkdir()
    (root / "d" / "good_1" / "t" / "-1" / "junk").mkdir()

    client = Client(f"file://{root}")
    assert client.dags() == ["_cache", "d"]
    runs = {run.run_id: run for run in client.runs("d")}
    assert set(runs) == {"good_1", "good_2", "half", "empty_run"}
    assert [r.run_id for r in client.runs("d")][:2] == ["good_2", "good_1"]  # newest first; unreadable ones last
    assert runs["good_1"].tasks["t"].result == 7 and runs["good_1"].problems == []
    good_2 = runs["good_2"]
    assert good_2["t"].result == 7
    assert any("not a JSON object" in p for p in good_2.problems)
    assert good_2.tasks["v"][-1].status.startswith("broken:") and "outcome.json" in good_2.tasks["v"][-1].status
    assert runs["half"].submitted_at is None and any("cannot be read" in p for p in runs["half"].problems)
    assert runs["empty_run"].problems == [] and runs["empty_run"].tasks == {}
    assert client.runs("_cache")[0]["t"].result == 7

    assert cli.main(["--store", f"file://{root}", "runs", "d"]) == 0
    listing = capsys.readouterr().out
    assert "good_1" in listing and "good_2" in listing and "1 broken folders" in listing
    assert cli.main(["--store", f"file://{root}", "show", "d", "half"]) == 0
    assert "broken: " in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_store_says_so_and_leaves_no_partial_result(dags, infra_yaml, tmp_path):
    import subprocess

    store = tmp_path / "small-store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(store)], check=True)
    try:
        infra_yaml(f"artifacts: file://{store}\n")
        run = dags.test("infra_full_disk")
        assert "task 'too_big'" in run.output and "no space left on the artifact store" in run.output, run.output[-3000:]
        assert "cannot be pickled" not in run.output
        from airflow_infra.client import Client

        stored = Client(f"file://{store}").run("infra_full_disk", run.run_id)
        assert stored["small"].result == 1  # the next task still runs and stores its result
        assert "no space left on the artifact store" in stored["too_big"][-1].status
        assert not list(store.rglob("too_big/**/out-*")) and not list(store.rglob(".*.tmp"))  # nothing half-written
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
