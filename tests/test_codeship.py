"""What a call ships: only the local code it reaches, by value; installed packages by reference."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import textwrap

import pytest

from airflow_infra.codeship import dumps_call


@pytest.fixture
def dag_folder(tmp_path, monkeypatch):
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "shipme_helpers.py").write_text("def double(x):\n    return 2 * x\n\nSECRET_OF_HELPERS = 'helpers'\n")
    (folder / "shipme_deep.py").write_text("import shipme_helpers\n\ndef quadruple(x):\n    return shipme_helpers.double(shipme_helpers.double(x))\n")
    (folder / "shipme_other_dag.py").write_text("OTHER_DAG_PASSWORD = 'hunter2'\n\ndef unrelated():\n    return OTHER_DAG_PASSWORD\n")
    (folder / "shipme_dag.py").write_text(
        textwrap.dedent(
            """
            import json  # installed: by reference
            from shipme_deep import quadruple

            def task_fn(x):
                return json.dumps(quadruple(x))

            def alone(x):
                return x + 1
            """
        )
    )
    monkeypatch.syspath_prepend(str(folder))
    names = ["shipme_helpers", "shipme_deep", "shipme_other_dag", "shipme_dag"]
    modules = {name: importlib.import_module(name) for name in names}  # all loaded, as in a worker
    yield folder, modules
    for name in names:
        sys.modules.pop(name, None)


def _run_elsewhere(blob: bytes, tmp_path) -> str:
    """Load and call the pickle in a fresh interpreter that has no DAG folder on its path."""
    path = tmp_path / "call.pkl"
    path.write_bytes(blob)
    code = "import pickle, sys; c = pickle.load(open(sys.argv[1], 'rb')); print(c['fn'](*c['args']))"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_only_the_modules_the_function_reaches_are_shipped(dag_folder, tmp_path):
    folder, modules = dag_folder
    blob, shipped = dumps_call(modules["shipme_dag"].task_fn, [3], {}, roots=[str(folder)])
    assert {m.__name__ for m in shipped} == {"shipme_dag", "shipme_deep", "shipme_helpers"}
    sources = pickle.loads(blob)["sources"]
    assert sorted(p.rsplit("/", 1)[1] for p in sources) == ["shipme_dag.py", "shipme_deep.py", "shipme_helpers.py"]
    assert b"hunter2" not in blob and b"OTHER_DAG_PASSWORD" not in blob  # another DAG's file stays home
    assert _run_elsewhere(blob, tmp_path) == "12"


def test_a_function_using_nothing_local_ships_its_own_module_only(dag_folder, tmp_path):
    folder, modules = dag_folder
    blob, shipped = dumps_call(modules["shipme_dag"].alone, [1], {}, roots=[str(folder)])
    assert [m.__name__ for m in shipped] == ["shipme_dag"]
    assert b"SECRET_OF_HELPERS" not in blob and b"hunter2" not in blob
    assert _run_elsewhere(blob, tmp_path) == "2"


def test_a_local_module_reached_through_an_argument_is_shipped(dag_folder, tmp_path):
    folder, modules = dag_folder
    # A local function passed as an argument (a callback) must arrive too.
    blob, shipped = dumps_call(_apply, [modules["shipme_helpers"].double, 5], {}, roots=[str(folder)])
    assert "shipme_helpers" in {m.__name__ for m in shipped}
    assert _run_elsewhere(blob, tmp_path) == "10"


def _apply(fn, x):
    return fn(x)
