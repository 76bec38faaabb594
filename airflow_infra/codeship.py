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
from types import CodeType, FunctionType, ModuleType
from typing import Any


def dumps_call(fn: Callable, args: list, kwargs: dict, *, roots: Iterable[str], **options: Any) -> tuple[bytes, list[ModuleType]]:
    """Pickle {fn, args, kwargs, **options, sources}. Returns the pickle and the modules shipped by value.

    Code from the function's own module and from modules under `roots` (the DAG folder) goes
    by value, because where the call runs has no DAG folder; installed packages go by
    reference. Only the local modules the pickle actually reaches are shipped (and their
    sources sent, for tracebacks): pickling notes each local module whose function, class
    or module object it meets by reference, and pickles again with those shipped too, until
    it meets none. Usually once: a function that uses nothing from another local module.
    """
    own = sys.modules.get(getattr(fn, "__module__", "") or "")
    ship: dict[str, ModuleType] = {}
    if own is not None and own.__name__ != "__main__":
        ship[own.__name__] = own
    prefixes = _root_prefixes(tuple(roots))
    while True:
        blob, wanted = _dump({"fn": fn, "args": list(args), "kwargs": dict(kwargs), **options}, ship, prefixes)
        if not wanted:
            return blob, list(ship.values())
        ship.update(wanted)


def _dump(payload: dict[str, Any], ship: dict[str, ModuleType], prefixes: tuple[str, ...]) -> tuple[bytes, dict[str, ModuleType]]:
    import cloudpickle

    registered = []
    try:
        for module in ship.values():
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                continue  # already registered by someone else, or not importable by name
        buffer = io.BytesIO()
        pickler = _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.ship, pickler.prefixes, pickler.wanted = ship, prefixes, {}
        # Last in the dict, so pickled after everything else: its sources are those of the
        # modules shipped in this round.
        pickler.dump({**payload, "sources": _Sources(ship)})
        return buffer.getvalue(), pickler.wanted
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


class _Sources:
    """Pickles as a plain dict {file: source} of the shipped modules, so tracebacks show the
    user's lines where their files are absent."""

    def __init__(self, ship: dict[str, ModuleType]) -> None:
        self.ship = ship

    def __reduce__(self) -> tuple:
        out = {}
        for module in self.ship.values():
            file = getattr(module, "__file__", None)
            if file and file.endswith(".py"):
                try:
                    out[file] = Path(file).read_text()
                except OSError:
                    continue
        return dict, (out,)


def _local_module(name: str, prefixes: tuple[str, ...]) -> ModuleType | None:
    """The loaded module `name` if its file lies under `prefixes` (and not in an installed package)."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not (isinstance(file, str) and file.startswith(prefixes)) or name == "__main__" or name.startswith("airflow_infra"):
        return None
    installed = tuple(p + os.sep for p in sys.path if "site-packages" in p or "dist-packages" in p)
    return None if file.startswith(installed) else module


@functools.lru_cache(maxsize=64)
def _root_prefixes(roots: tuple[str, ...]) -> tuple[str, ...]:
    # Each root as given and resolved (realpath asks the filesystem about every component:
    # once per process and root), checked by str.startswith.
    return tuple(sorted({form + os.sep for r in roots if r for form in (os.path.abspath(r), os.path.realpath(r))}))


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
        ship: dict[str, ModuleType] = {}
        prefixes: tuple[str, ...] = ()
        wanted: dict[str, ModuleType] = {}

        def reducer_override(self, obj: Any) -> Any:
            # A function, class or module of a local module not shipped yet would go by
            # reference, and fail to import where the call runs: note it for the next round.
            kind = type(obj)
            if kind is FunctionType or kind is ModuleType or isinstance(obj, type):
                name = obj.__name__ if kind is ModuleType else getattr(obj, "__module__", None)
                if isinstance(name, str) and name not in self.ship and name not in self.wanted and self.prefixes:
                    module = _local_module(name, self.prefixes)
                    if module is not None:
                        self.wanted[name] = module
            return super().reducer_override(obj)

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
        parts.append(_source_of(obj))
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


def _source_of(obj: Any) -> str:
    """inspect.getsource(obj) (or, without a source, the bytecode or repr), remembered per
    code object or class.

    getsource tokenises the file (for a class, parses it) on every call, which a worker would
    repeat for every call of the same function. A code object's source does not change while
    it is loaded: a new version of the file becomes a new code object once its module is
    loaded again (before, getsource would only have read the new file's lines at the old
    code's line numbers). The memo holds the object it describes, so an id is never reused
    meanwhile.
    """
    import inspect

    key = getattr(obj, "__code__", obj)
    remembered = _SOURCES.get(id(key))
    if remembered is not None and remembered[0] is key:
        return remembered[1]
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        text = code.co_code.hex() if code is not None else repr(obj)
    if isinstance(key, CodeType) or inspect.isclass(key):  # other objects' repr may change: not remembered
        if len(_SOURCES) >= 4096:
            _SOURCES.clear()
        _SOURCES[id(key)] = (key, text)
    return text


_SOURCES: dict[int, tuple[Any, str]] = {}
