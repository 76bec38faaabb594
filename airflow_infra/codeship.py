"""Shipping a task's function to where it runs, which has no Airflow and no DAG folder.

The function goes by value (cloudpickle), together with everything it uses from the DAG
file and from modules in the DAG's folder; installed packages go by reference and are
imported from the task's own environment. Bytecode is only valid on the Python minor
version that compiled it, which is why a task's environment must use the worker's Python.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import sys
from collections import ChainMap
from collections.abc import Callable, Iterable
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any


def local_modules(fn: Callable, roots: Iterable[str]) -> list[ModuleType]:
    """The function's own module and every loaded module whose file lies under `roots`."""
    # Plain string prefixes (each root as given and resolved), checked by str.startswith
    # in C: resolving each of the thousands of loaded modules' paths would cost more than
    # the rest of a task's start.
    prefixes = tuple({form + os.sep for r in roots if r for form in (os.path.abspath(r), os.path.realpath(r))})
    installed = tuple(p + os.sep for p in sys.path if "site-packages" in p or "dist-packages" in p)
    found: dict[str, ModuleType] = {}
    own = sys.modules.get(getattr(fn, "__module__", "") or "")
    if own is not None and own.__name__ != "__main__":
        found[own.__name__] = own
    if not prefixes:
        return list(found.values())
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and file.startswith(prefixes) and not file.startswith(installed) and name != "__main__" and not name.startswith("airflow_infra"):
            found[name] = module
    return list(found.values())


def dumps_call(fn: Callable, args: list, kwargs: dict, *, modules: Iterable[ModuleType], **options: Any) -> bytes:
    """Pickle {fn, args, kwargs, **options} with `modules` (see local_modules) shipped by value."""
    import cloudpickle

    modules = list(modules)
    options["sources"] = _sources(modules)
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                continue  # already registered by someone else, or not importable by name
        payload = {"fn": fn, "args": list(args), "kwargs": dict(kwargs), **options}
        buffer = io.BytesIO()
        _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
        return buffer.getvalue()
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def _sources(modules: list[ModuleType]) -> dict[str, str]:
    """The source of each shipped module, so tracebacks show the user's lines where the files are absent."""
    out = {}
    for module in modules:
        file = getattr(module, "__file__", None)
        if file and file.endswith(".py"):
            try:
                out[file] = Path(file).read_text()
            except OSError:
                continue
    return out


@functools.cache
def _pickler_class() -> type:
    import cloudpickle
    from cloudpickle.cloudpickle import _code_reduce

    def code_reduce_keeping_filename(code: CodeType) -> Any:
        # cloudpickle blanks co_filename to "<dynamic-code>"; keep the real one so a user's
        # traceback names their file and shows its lines.
        constructor, args = _code_reduce(code)
        return constructor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)

    class Pickler(cloudpickle.Pickler):
        dispatch_table = ChainMap({CodeType: code_reduce_keeping_filename}, cloudpickle.Pickler.dispatch_table)

    return Pickler


class _PlainUnpickler(pickle.Unpickler):
    """Loads only pickles of builtin containers and scalars: it refuses every global."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} in the worker")


def loads_plain(blob: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(blob)).load()


_SIMPLE = (int, float, str, bytes, bool, type(None))


def code_fingerprint(fn: Callable, modules: Iterable[ModuleType]) -> str:
    """A stable hash of the code a call runs: the function's source, the sources of the
    functions and classes it uses from the DAG's own modules, and the simple constants it
    reads. Installed packages count by name only (their versions are in the environment hash).

    Not a hash of the pickle: pickled sets of strings change order between processes.
    """
    import hashlib
    import inspect

    shipped = {m.__name__ for m in modules}
    parts: list[str] = []
    seen: set[int] = set()

    def names(code: CodeType) -> set[str]:
        out = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, CodeType):
                out |= names(const)
        return out

    def describe(name: str, value: Any) -> None:
        if isinstance(value, _SIMPLE):
            parts.append(f"{name}={value!r}")
        elif isinstance(value, ModuleType):
            parts.append(f"{name}=module:{value.__name__}")
        elif inspect.isfunction(value) or inspect.isclass(value):
            if getattr(value, "__module__", None) in shipped:
                visit(value)
            else:
                parts.append(f"{name}={value.__module__}.{value.__qualname__}")

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        try:
            parts.append(inspect.getsource(obj))
        except (OSError, TypeError):
            code = getattr(obj, "__code__", None)
            parts.append(code.co_code.hex() if code is not None else repr(obj))
        code = getattr(obj, "__code__", None)
        if code is None:
            return
        for cell_name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                describe(cell_name, cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        globals_ = getattr(obj, "__globals__", {})
        for name in sorted(names(code)):
            if name in globals_:
                describe(name, globals_[name])

    visit(fn)
    return hashlib.sha256("\n\0".join(parts).encode()).hexdigest()
