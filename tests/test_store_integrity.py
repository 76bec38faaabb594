"""The artifact store's integrity boundary: nothing is read from outside the configured store,
whatever a reference, a cache entry, an outcome or a stored handle says (any task can write
XCom and the store), and one broken entry affects only itself."""

from __future__ import annotations

import json
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
