"""Read infra tasks' declarations out of DAG files, in a fresh interpreter that holds none of
the api-server's secrets.

The plugin needs the declarations (packages, target, ...), which the serialized DAGs in the
database do not keep, so it parses the DAG files; parsing runs their top-level code. That
code must not run with the api-server's rights, so `parse_files` starts this module as a new
Python process with a scrubbed environment: no variable of the api-server's but the locale
and PATH, a throw-away AIRFLOW_HOME (so Airflow reads a default configuration with its own
database URL, secret key and Fernet key, not the api-server's airflow.cfg), no connections,
no `[infra]` settings. The child only reports what each DAG declares, as JSON on stdout; the
api-server plans from that (routing, image references), which runs no DAG code.

Protocol: stdin {"files": {path: [dag_id, ...]}}; stdout one JSON line per file,
{"path": ..., "dags": {dag_id: [declaration, ...]}} or {"path": ..., "error": ...}.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from airflow_infra.pipeline.plan import TaskDeclaration

# What the child keeps of the api-server's environment: nothing that can hold a secret.
_KEPT = ("PATH", "LANG", "LANGUAGE", "TZ")


def parse_files(files: dict[str, list[str]], dags_folder: str, timeout: float) -> dict[str, dict[str, Any]]:
    """{path: {"dags": {dag_id: [TaskDeclaration, ...]}} or {"error": ...}} for each file.

    One child for all files, read as it answers: a file that hangs costs the files after it
    (reported as not parsed), not the api-server."""
    home = tempfile.mkdtemp(prefix="airflow-infra-parse-")
    answers: dict[str, dict[str, Any]] = {}
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "airflow_infra.plugin.parse"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # DAG code's prints and Airflow's logs: not for the page
            env=child_environment(home, dags_folder),
            cwd=home,
            start_new_session=True,  # killed as a group, with anything the DAG code started
        )
        child.stdin.write(json.dumps({"files": files}).encode())
        child.stdin.close()
        _read_answers(child, answers, timeout)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for path in files:
        answers.setdefault(path, {"error": f"not parsed: the parsing process gave up after {timeout:g}s or died"})
    return answers


def _read_answers(child: subprocess.Popen, answers: dict[str, dict[str, Any]], timeout: float) -> None:
    deadline, buffer = time.monotonic() + timeout, b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([child.stdout], [], [], left)[0]:
                break
            chunk = os.read(child.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                answer = json.loads(line)
                path = answer.pop("path")
                if "dags" in answer:
                    answer["dags"] = {d: [TaskDeclaration(**t) for t in ts] for d, ts in answer["dags"].items()}
                answers[path] = answer
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.stdout.close()
        child.wait()


def child_environment(home: str, dags_folder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEPT or k.startswith("LC_")}
    return {
        **env,
        "HOME": home,
        "AIRFLOW_HOME": home,
        "AIRFLOW_CONFIG": os.path.join(home, "airflow.cfg"),
        "AIRFLOW__CORE__DAGS_FOLDER": dags_folder,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The api-server's import path (DAG folder, plugins folder, this package): DAG files
        # import their helpers as under the dag-processor.
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)  # shown in the plan's error, not executed


def _declarations_of(path: str, dag_ids: list[str]) -> dict[str, Any]:
    from airflow_infra.errors import InfraError
    from airflow_infra.pipeline.plan import declarations, load_dags

    try:
        dags = [dag for dag in load_dags(path) if dag.dag_id in set(dag_ids)]
    except InfraError as exc:
        return {"error": str(exc)}
    return {
        "dags": {
            dag.dag_id: [
                {"task_id": t.task_id, "declared": _json_value(t.declared), "target": _json_value(t.target), "mapped": t.mapped}
                for t in declarations(dag)
            ]
            for dag in dags
        }
    }


def main() -> None:
    request = json.load(sys.stdin)
    # The answers get their own copy of stdout; whatever DAG code writes to stdout (print,
    # or straight to file descriptor 1) goes where stderr goes.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for path, dag_ids in request["files"].items():
        try:
            answer = _declarations_of(path, dag_ids)
        except BaseException as exc:  # noqa: BLE001 - a DAG file may raise anything, SystemExit included
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps({"path": path, **answer}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
