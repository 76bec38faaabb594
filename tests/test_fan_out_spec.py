"""Fan-out's parts on their own (airflow_infra/pipeline/fanout.py, runtime.FanOutResults):
what a declaration may say, how items map to chunks and back, what an earlier try's
manifest may make this one reuse, and how failures are judged."""

from __future__ import annotations

import json
import logging
import math
import pickle

import pytest

from airflow_infra.artifacts import ArtifactStore
from airflow_infra.errors import InfraSpecError, InfraTaskFailed
from airflow_infra.pipeline import fanout
from airflow_infra.runtime import FanOutResults

LOG = logging.getLogger("test_fan_out_spec")


def square(x: int, k: int = 1) -> int:
    return x * x * k


# -- declarations, checked where the DAG is parsed ------------------------------------------


@pytest.mark.parametrize(("spec", "words"), [
    ({"argument": "not a name"}, "must be a parameter name"),
    ({"argument": 3}, "must be a parameter name"),
    ({"argument": "y"}, "'y', which is not a parameter of square (x, k)"),
    ({"argument": "x", "chunk": 0}, "chunk must be a whole number from 1 to 1000000, got 0"),
    ({"argument": "x", "chunk": -5}, "chunk must be a whole number"),
    ({"argument": "x", "chunk": 2.5}, "chunk must be a whole number"),
    ({"argument": "x", "chunk": "10"}, "chunk must be a whole number"),
    ({"argument": "x", "chunk": True}, "chunk must be a whole number"),
    ({"argument": "x", "parallelism": 0}, "parallelism must be a whole number"),
    ({"argument": "x", "parallelism": 10**7}, "parallelism must be a whole number"),
    ({"argument": "x", "max_failures": -1}, "max_failures must not be negative"),
    ({"argument": "x", "max_failures": 1.0}, "as a fraction must be from 0 to below 1"),
    ({"argument": "x", "max_failures": -0.1}, "as a fraction must be from 0 to below 1"),
    ({"argument": "x", "max_failures": math.nan}, "as a fraction must be from 0 to below 1"),
    ({"argument": "x", "max_failures": "1"}, "must be a count (int) or a fraction (float)"),
    ({"argument": "x", "max_failures": None}, "must be a count (int) or a fraction (float)"),
    ({"argument": "x", "max_failures": True}, "must be a count (int) or a fraction (float)"),
    ({"argument": "x", "extra": 1}, "fan_out must be {argument, chunk, parallelism, max_failures}"),
    ("x", "fan_out must be {argument, chunk, parallelism, max_failures}"),
])
def test_a_bad_fan_out_is_refused_naming_the_dag_task_and_field(spec, words):
    with pytest.raises(InfraSpecError) as caught:
        fanout.check_fan_out(spec, square, {}, False, None, "d", "t")
    assert "DAG 'd', task 't': " in str(caught.value) and words in str(caught.value)


@pytest.mark.parametrize(("declared", "cache", "on_oom", "words"), [
    ({"memory": "auto"}, False, None, "memory='auto' is not supported for a fan-out"),
    ({"cpu": "auto:2"}, False, None, "cpu='auto' is not supported for a fan-out"),
    ({"memory": "1Gi"}, False, "double", "on_oom is not supported for a fan-out"),
    ({}, True, None, "cache is not supported for a fan-out"),
])
def test_what_a_fan_out_does_not_take_yet_is_refused(declared, cache, on_oom, words):
    with pytest.raises(InfraSpecError, match=words):
        fanout.check_fan_out({"argument": "x"}, square, declared, cache, on_oom, "d", "t")


def test_the_decorator_checks_its_fan_out_when_the_dag_is_parsed():
    from airflow.sdk import dag

    from airflow_infra import infra_task

    fn = infra_task(square)
    cases = [
        (lambda: fn.fan_out(), "fan_out takes the one argument to fan out over, e.g. .fan_out(x=items); got none"),
        (lambda: fn.fan_out(x=[1], k=[2]), "got ['k', 'x']"),
        (lambda: fn.partial(x=1).fan_out(x=[1]), "fan_out over 'x', which .partial() already fixed"),
        (lambda: fn.fan_out(y=[1]), "'y', which is not a parameter of square"),
        (lambda: fn.fan_out(x=[1], chunk=0), "chunk must be a whole number"),
        (lambda: infra_task(memory="auto")(square).fan_out(x=[1]), "memory='auto' is not supported for a fan-out"),
    ]
    for make, words in cases:
        @dag(dag_id="fan_out_parse", schedule=None)
        def build():
            make()

        with pytest.raises(InfraSpecError) as caught:
            build()
        assert "DAG 'fan_out_parse', task 'square'" in str(caught.value) and words in str(caught.value), str(caught.value)

    @dag(dag_id="fan_out_ok", schedule=None)
    def fine():
        fn.partial(k=2).fan_out(x=[1, 2, 3], chunk=2, parallelism=2, max_failures=0.5)
        fn.override(task_id="by_over").fan_out(over={"x": [1]})

    built = fine()
    assert built.get_task("square").fan_out == {"argument": "x", "chunk": 2, "parallelism": 2, "max_failures": 0.5}
    assert built.get_task("square").op_kwargs == {"k": 2, "x": [1, 2, 3]}
    assert built.get_task("by_over").fan_out["argument"] == "x"


@pytest.mark.parametrize("value", [None, "abc", b"abc", {"a": 1}, 7, 2.5, object()])
def test_items_that_are_not_a_list_fail_the_task_naming_the_argument(value):
    with pytest.raises(InfraTaskFailed, match=r"DAG 'd', task 't': fan_out over 'x' needs a list of items at run time, got"):
        fanout.items_of(value, fanout.FanOut("x"), "d", "t")


def test_items_may_be_any_sized_iterable():
    assert fanout.items_of((1, 2), fanout.FanOut("x"), "d", "t") == [1, 2]
    assert fanout.items_of(range(3), fanout.FanOut("x"), "d", "t") == [0, 1, 2]
    assert fanout.items_of([], fanout.FanOut("x"), "d", "t") == []


# -- chunks ----------------------------------------------------------------------------------


def test_chunk_sizes():
    spec = fanout.FanOut("x")
    assert fanout.chunking(10_000, spec.chunk, 2, None) == 1250  # four chunks per worker
    assert fanout.chunking(3, spec.chunk, 8, None) == 1
    assert fanout.chunking(1000, 50, 8, None) == 50
    assert fanout.chunking(100_000, 1, 8, 10_000) == 10  # never over the platform's limit
    assert fanout.chunking(0, spec.chunk, 2, None) == 1


def test_segments_keep_each_index_at_its_position():
    assert fanout.segments([0, 1, 2, 5, 6]) == [[0, 2, 0], [5, 6, 3]]
    assert fanout.segments([]) == []
    runs = fanout.segments([0, 1, 2, 5, 6])
    assert fanout.without(runs, {1, 5}) == [[0, 0, 0], [2, 2, 2], [6, 6, 4]]
    assert fanout.without(runs, set()) == runs
    assert fanout.without(runs, {0, 1, 2, 5, 6}) == []


def _results(chunks: dict[str, list], manifest_chunks: list[dict], length: int, failed=()) -> tuple[FanOutResults, list[str]]:
    reads = []

    def read(uri):
        reads.append(uri)
        return chunks[uri]

    return FanOutResults({"length": length, "chunks": manifest_chunks, "failed": list(failed)}, read), reads


def test_fan_out_results_read_a_chunk_at_a_time_in_index_order():
    # Chunk "a" holds 0-2 and 6-7 (positions 0-4), chunk "b" holds 3-5: as a rerun leaves them.
    results, reads = _results({"a": [0, 10, 20, 60, 70], "b": [30, 40, 50]},
                              [{"results": "a", "segments": [[0, 2, 0], [6, 7, 3]]}, {"results": "b", "segments": [[3, 5, 0]]}], 8)
    assert len(results) == 8 and list(results) == [0, 10, 20, 30, 40, 50, 60, 70]
    assert reads == ["a", "b", "a"]  # one chunk kept at a time
    assert results[-1] == 70 and results[2:5] == [20, 30, 40] and results[::3] == [0, 30, 60]
    for bad in (8, -9):
        with pytest.raises(IndexError):
            results[bad]
    with pytest.raises(TypeError):
        results["1"]
    assert pickle.loads(pickle.dumps(results)) == [0, 10, 20, 30, 40, 50, 60, 70]  # passed on by value
    from collections.abc import Sequence

    assert isinstance(results, Sequence) and repr(results) == "FanOutResults(8 items, 0 failed)"


def test_an_index_no_chunk_holds_is_an_error_not_a_wrong_value():
    results, _ = _results({"a": [0, 1]}, [{"results": "a", "segments": [[0, 1, 0]]}], 4)
    with pytest.raises(IndexError, match="fan-out result 3 is in no chunk"):
        results[3]


# -- what a later try reuses -------------------------------------------------------------------


def _earlier(tmp_path, manifest) -> tuple[ArtifactStore, object]:
    store = ArtifactStore(f"file://{tmp_path}/store")
    base = store.root / "d" / "r" / "t" / "-1"
    store.write_json(base / "1" / fanout.MANIFEST, manifest)
    return store, base / "2"


def _manifest(store_uri: str, **changes) -> dict:
    good = {"length": 4, "fingerprint": "f", "failed": [2],
            "chunks": [{"results": f"{store_uri}/d/r/t/-1/1/chunk-0.pkl", "segments": [[0, 3, 0]]}]}
    return {**good, **changes}


def test_a_later_try_reuses_the_good_results_of_the_same_items(tmp_path):
    uri = f"file://{tmp_path}/store"
    store, folder = _earlier(tmp_path, _manifest(uri))
    done = fanout.earlier_results(store, folder, "f", LOG)
    assert done.indexes == {0, 1, 3}
    assert done.chunks == [{"results": f"{uri}/d/r/t/-1/1/chunk-0.pkl", "segments": [[0, 1, 0], [3, 3, 3]]}]
    assert fanout.earlier_results(store, folder, "other items", LOG).indexes == set()


@pytest.mark.parametrize("changes", [
    {"chunks": [{"results": "file:///etc/passwd", "segments": [[0, 3, 0]]}]},  # outside the store
    {"chunks": [{"results": "s3://elsewhere/x.pkl", "segments": [[0, 3, 0]]}]},
    {"chunks": [{"segments": [[0, 3, 0]]}]},
    {"chunks": [{"results": 7, "segments": [[0, 3, 0]]}]},
    {"chunks": "nope"},
    {"failed": None},
    {"chunks": [{"results": "x", "segments": [["a", 3, 0]]}]},
])
def test_an_earlier_manifest_that_is_not_ours_is_ignored_with_a_warning(tmp_path, caplog, changes):
    store, folder = _earlier(tmp_path, _manifest(f"file://{tmp_path}/store", **changes))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert fanout.earlier_results(store, folder, "f", LOG).indexes == set()
    assert "not a fan-out manifest this task wrote" in caplog.text


def test_only_earlier_tries_count(tmp_path):
    store, _ = _earlier(tmp_path, _manifest(f"file://{tmp_path}/store"))
    assert fanout.earlier_results(store, store.root / "d" / "r" / "t" / "-1" / "1", "f", LOG).indexes == set()  # itself
    later = store.root / "d" / "r" / "t" / "-1" / "1-2"
    assert fanout.earlier_results(store, later, "f", LOG).indexes == {0, 1, 3}  # an attempt after it


# -- the end: reports, the manifest, the tolerance ---------------------------------------------


def _concluded(tmp_path, reports: dict[int, list[dict]], chunks, max_failures=0, length=None):
    store = ArtifactStore(f"file://{tmp_path}/store")
    folder = store.root / "d" / "r" / "t" / "-1" / "1"
    for number, items in reports.items():
        store.write_json(folder / f"chunk-{number}.json", {"chunk": number, "items": items})
    length = length or sum(last - first + 1 for runs in chunks for first, last, _ in runs)
    value = fanout.conclude(store, folder, fanout.FanOut("x", max_failures=max_failures), length, chunks, [], 0, "f", "d", "t", LOG)
    return store, folder, value


def test_a_chunk_that_reported_nothing_fails_its_items_and_the_manifest_says_where_each_result_is(tmp_path):
    ok = [{"index": i, "ok": True, "wall_seconds": 0.1 * i} for i in range(3)]
    store, folder, value = _concluded(tmp_path, {0: ok}, [[[0, 2, 0]], [[3, 4, 0]]], max_failures=2)
    manifest = store.read_json(folder / fanout.MANIFEST)
    assert manifest["failed"] == [3, 4] and manifest["errors"]["3"]["type"] == "NoReport"
    assert value["length"] == 5 and value["fan_out"] is True and value["__infra_artifact__"].endswith("/fan_out.json")
    outcome = store.read_json(folder / "outcome.json")
    assert outcome["fan_out"] == {"items": 5, "ran": 5, "reused": 0, "failed": 2}
    assert outcome["items_measured"]["slowest"][0] == {"index": 2, "wall_seconds": 0.2}


def test_more_failures_than_a_fraction_tolerates_fail_the_task_after_the_manifest_is_written(tmp_path):
    bad = [{"index": i, "ok": i % 10 != 0, "error": {"type": "ValueError", "message": f"bad {i}"}} for i in range(40)]
    with pytest.raises(InfraTaskFailed) as caught:
        _concluded(tmp_path, {0: bad}, [[[0, 39, 0]]], max_failures=0.05)
    text = str(caught.value)
    assert "4 of 40 items failed (max_failures=0.05 tolerates 2)" in text and "item 0: ValueError: bad 0" in text
    assert "Clearing the task runs only the failed items again." in text
    assert json.loads((tmp_path / "store/d/r/t/-1/1/fan_out.json").read_text())["failed"] == [0, 10, 20, 30]
    _concluded(tmp_path, {0: bad}, [[[0, 39, 0]]], max_failures=0.1)  # 4 of 40 is within 10 %
