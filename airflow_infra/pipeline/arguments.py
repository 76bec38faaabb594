"""The function's arguments: Airflow's values (rendered templates, context, lazy XCom
sequences) turned into the plain values a function gets where no Airflow is installed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_infra.errors import InfraSpecError

# Context values a function may ask for by parameter name, beyond Airflow's own keys.
EXTRA_CONTEXT = ("map_index",)

def to_plain(value: Any) -> Any:
    """A context value as plain Python (pendulum -> datetime, ParamsDict -> dict), or TypeError."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for scalar in (bool, str, int, float):  # subclasses (pendulum aside) become the builtin
        if isinstance(value, scalar) and not isinstance(value, dt.date):
            return scalar(value)
    if isinstance(value, dt.datetime):
        return dt.datetime.fromtimestamp(value.timestamp(), tz=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.date(value.year, value.month, value.day)
    if isinstance(value, Mapping):
        return {str(k): to_plain(value[k]) for k in value}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def materialize(value: Any) -> Any:
    """Turn lazy XCom sequences (what a task downstream of a mapped task gets) into lists."""
    if isinstance(value, (str, bytes, bytearray)):
        return value
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(v) for v in value)
    if isinstance(value, Sequence):
        # One slice is one request for the whole sequence; iterating would fetch item by item
        # and probe one past the end.
        return [materialize(v) for v in value[:]]
    return value


_SCALARS: dict[Any, Callable[[str], Any]] = {
    float: float,
    int: int,
    bool: lambda text: {"true": True, "false": False, "1": True, "0": False}[text.strip().lower()],
}
_SCALARS.update({t.__name__: f for t, f in list(_SCALARS.items())})  # string annotations (PEP 563)


def coerce_rendered(fn: Callable, args: list, kwargs: dict, where_: str) -> tuple[list, dict]:
    """Convert rendered template strings to the parameter's annotated int, float or bool.

    Jinja renders `lr="{{ params.lr }}"` to the string '0.1'; a function annotated
    `lr: float` means a float, as it would in a plain call.
    """
    import inspect

    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except TypeError:
        return args, kwargs
    params = inspect.signature(fn).parameters
    for name, value in list(bound.arguments.items()):
        convert = _SCALARS.get(params[name].annotation)
        if convert is None or not isinstance(value, str):
            continue
        try:
            bound.arguments[name] = convert(value)
        except (ValueError, KeyError):
            raise InfraSpecError(
                f"{where_}: argument {name}={value!r} does not convert to its annotation {params[name].annotation}"
            ) from None
    return list(bound.args), dict(bound.kwargs)


def call_arguments(fn: Callable, op_args: list, op_kwargs: dict, context: Any, where_: str) -> tuple[list, dict]:
    """The positional and keyword arguments the function is called with: the user's own
    (lazy sequences materialised), plus the context keys it names as parameters, as plain values."""
    import inspect

    from airflow.sdk.bases.decorator import KeywordParameters
    from airflow.sdk.definitions.context import Context, context_merge

    user_keys = set(op_kwargs)
    context_merge(context, op_kwargs)
    wanted = KeywordParameters.determine(fn, op_args, context).unpacking()
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    for key, value in wanted.items():
        if key in user_keys:
            kwargs[key] = materialize(value)
            continue
        try:
            kwargs[key] = to_plain(value)
        except TypeError as exc:
            if key in params:  # asked for by name: say why it cannot be had
                raise InfraSpecError(
                    f"{where_}: the function asks for context {key!r} ({exc}), "
                    "which cannot travel to where it runs; ask for plain values such as params, run_id, "
                    "ds, logical_date, try_number or map_index"
                ) from None
    for key in EXTRA_CONTEXT:
        if key in params and key not in user_keys:
            kwargs[key] = context["ti"].map_index
    for key, param in params.items():
        # A run triggered without a logical date has no logical_date, ds, data_interval_*...:
        # a function that names one gets None rather than a TypeError about its signature.
        # (The user's own arguments were merged into the context above.)
        if key in Context.__annotations__ and key not in context and param.default is inspect.Parameter.empty:
            kwargs[key] = None
    args = [materialize(a) for a in op_args]
    return coerce_rendered(fn, args, kwargs, where_)
