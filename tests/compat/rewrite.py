"""Rewrite an Airflow example DAG file so that its plain `@task`s become `@task.infra`.

Done on the syntax tree (`ast`), with the edits applied to the source text at the nodes'
positions, so everything else in the file (comments, layout, other decorators) stays as
Airflow ships it and the rewrite follows the installed Airflow version:

- `@task` / `@task(...)` (the name `task` imported from `airflow.sdk`), and a call
  `task(...)` used as a decorator factory elsewhere, become `@task.infra` / `@task.infra(...)`.
  Attribute forms (`@task.virtualenv`, `@task.bash`, `@task.branch`, `@task.sensor`,
  `@task.short_circuit`, `@task.external_python`, ...) are different operators with their own
  semantics (a branch decision, a poke, a shell command, an interpreter of their own) and
  stay as they are.
- `@setup` / `@teardown` on a bare function mean "a plain `@task`, marked as setup/teardown";
  `@task.infra` is inserted under them, so the task is an infra task with the same role.
- Every DAG definition gets its id suffixed (`DAG("x")`, `DAG(dag_id=...)`, `@dag`,
  `@dag(dag_id=...)`; an id that is an expression, e.g. `Path(__file__).stem`, becomes
  `(expr) + "_infra"`), so both versions live in one dags folder. (`@asset` functions,
  DAGs named after their asset, are not renamed.)

The result is compiled before it is returned; a file without an id to rename, or with
@setup/@teardown but no `task` import, raises ValueError.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

SDK_MODULES = {"airflow.sdk", "airflow.decorators"}
DAG_MODULES = {"airflow.sdk", "airflow", "airflow.models", "airflow.models.dag", "airflow.sdk.definitions.dag"}


@dataclass
class Rewritten:
    source: str
    tasks: list[str] = field(default_factory=list)  # functions whose decorator became @task.infra
    dags: list[str] = field(default_factory=list)  # the DAG id expressions renamed (as written)
    dag_ids: list[str] = field(default_factory=list)  # the original ids of those that are literal


def _aliases(tree: ast.Module, name: str, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in modules:
            found |= {a.asname or a.name for a in node.names if a.name == name}
    return found


class _Editor:
    def __init__(self, source: str):
        self.data = source.encode()
        self.starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.edits: list[tuple[int, int, str]] = []

    def offset(self, lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return self.starts[lineno - 1] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.data[start:end].decode()

    def replace(self, node: ast.AST, text: str) -> None:
        self.edits.append((*self.span(node), text))

    def insert(self, at: int, text: str) -> None:
        self.edits.append((at, at, text))

    def apply(self) -> str:
        data, last = self.data, None
        for start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1]), reverse=True):
            if last is not None and end > last:
                raise ValueError(f"overlapping edits at byte {start}")
            data = data[:start] + text.encode() + data[end:]
            last = start
        return data.decode()


def to_infra(source: str, suffix: str = "_infra", filename: str = "<dag file>") -> Rewritten:
    """The file with its plain @task decorators turned into @task.infra and its DAG ids suffixed."""
    tree = ast.parse(source, filename)
    editor = _Editor(source)
    out = Rewritten(source)
    tasks = _aliases(tree, "task", SDK_MODULES)
    roles = _aliases(tree, "setup", SDK_MODULES) | _aliases(tree, "teardown", SDK_MODULES)
    dag_classes = _aliases(tree, "DAG", DAG_MODULES)
    dag_decorators = _aliases(tree, "dag", SDK_MODULES)
    task_alias = next(iter(sorted(tasks)), None)

    def is_name(node: ast.AST, names: set[str]) -> bool:
        return isinstance(node, ast.Name) and node.id in names

    def is_task_decorator(dec: ast.AST) -> bool:  # any @task / @task(...) / @task.x / @task.x(...)
        target = dec.func if isinstance(dec, ast.Call) else dec
        while isinstance(target, ast.Attribute):
            target = target.value
        return is_name(target, tasks)

    def rename(expr: ast.AST) -> None:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            editor.replace(expr, repr(expr.value + suffix))
            out.dag_ids.append(expr.value)
        else:
            editor.replace(expr, f"({editor.text(expr)}) + {suffix!r}")
        out.dags.append(editor.text(expr))

    # task(...) anywhere (decorator factory or direct call): task -> task.infra
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_name(node.func, tasks):
            editor.replace(node.func, f"{node.func.id}.infra")
        if isinstance(node, ast.Call) and (is_name(node.func, dag_classes) or (
            isinstance(node.func, ast.Attribute) and node.func.attr == "DAG"
        )):
            kw = next((k for k in node.keywords if k.arg == "dag_id"), None)
            if kw is not None:
                rename(kw.value)
            elif node.args:
                rename(node.args[0])
            else:
                raise ValueError(f"{filename}:{node.lineno}: a DAG(...) without a dag_id")

    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for dec in node.decorator_list:
            if is_name(dec, tasks):  # bare @task
                editor.replace(dec, f"{dec.id}.infra")
                out.tasks.append(node.name)
            elif isinstance(dec, ast.Call) and is_name(dec.func, tasks):  # @task(...), edited above
                out.tasks.append(node.name)
            elif is_name(dec, dag_decorators):  # bare @dag: the id is the function's name
                editor.replace(dec, f"{dec.id}(dag_id={node.name + suffix!r})")
                out.dags.append(node.name)
                out.dag_ids.append(node.name)
            elif isinstance(dec, ast.Call) and is_name(dec.func, dag_decorators):
                kw = next((k for k in dec.keywords if k.arg == "dag_id"), None)
                if kw is not None:
                    rename(kw.value)
                else:
                    paren = editor.data.index(b"(", editor.span(dec.func)[1])
                    editor.insert(paren + 1, f"dag_id={node.name + suffix!r}, ")
                    out.dags.append(node.name)
                    out.dag_ids.append(node.name)
        role = [d for d in node.decorator_list if is_name(d.func if isinstance(d, ast.Call) else d, roles)]
        if role and not any(is_task_decorator(d) for d in node.decorator_list):
            if task_alias is None:
                raise ValueError(f"{filename}:{node.lineno}: @setup/@teardown in a file that does not import task")
            line = editor.starts[node.lineno - 1]
            indent = editor.data[line : line + node.col_offset].decode()
            editor.insert(line, f"{indent}@{task_alias}.infra\n")
            out.tasks.append(node.name)

    out.source = editor.apply()
    compile(out.source, filename, "exec")
    return out
