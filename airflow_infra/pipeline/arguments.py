"""The function's arguments: Airflow's values (rendered templates, context, lazy XCom
sequences) turned into the plain values a function gets where no Airflow is installed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_infra.errors import InfraSpecError

# Values a function may ask for by parameter name that Airflow keeps on the task instance,
# not in the context.
FROM_TASK_INSTANCE = ("map_index", "try_number")


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


def _from_airflow(value: Any) -> bool:
    return type(value).__module__.split(".")[0] in ("airflow", "pendulum")


def plain_value(value: Any) -> Any:
    """A user argument with Airflow's own types made plain, wherever they sit in lists, tuples
    and dicts: pendulum datetimes, dates and durations become datetime (offset kept), date and
    timedelta; ParamsDict and other Airflow mappings become dicts; lazy XCom sequences (what a
    task downstream of a mapped task gets) become lists. Everything else stays as it is."""
    if value is None or type(value) in (str, int, float, bool, bytes):
        return value
    if type(value) is dict or (isinstance(value, Mapping) and _from_airflow(value)):
        return {k: plain_value(value[k]) for k in value}
    if type(value) in (list, tuple):
        return type(value)(plain_value(v) for v in value)
    if not _from_airflow(value):
        return value
    if isinstance(value, dt.datetime):
        offset = value.utcoffset()
        return dt.datetime(
            value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
            tzinfo=None if offset is None else dt.timezone(offset),
        )
    if isinstance(value, dt.date):
        return dt.date(value.year, value.month, value.day)
    if isinstance(value, dt.timedelta):
        return dt.timedelta(days=value.days, seconds=value.seconds, microseconds=value.microseconds)
    if isinstance(value, Sequence):
        # One slice is one request for the whole sequence; iterating would fetch item by item
        # and probe one past the end.
        return [plain_value(v) for v in value[:]]
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


def call_arguments(
    fn: Callable, op_args: list, op_kwargs: dict, context: Any, where_: str, templates_dict: dict | None = None
) -> tuple[list, dict]:
    """The positional and keyword arguments the function is called with, as @task would
    pass them: the user's own (Airflow's types made plain), `templates_dict` and the context
    keys it names as parameters, as plain values."""
    import inspect

    from airflow.sdk.bases.decorator import KeywordParameters
    from airflow.sdk.definitions.context import Context, context_merge

    user_keys = {*op_kwargs, "templates_dict"}
    context_merge(context, op_kwargs, templates_dict=templates_dict)
    wanted = KeywordParameters.determine(fn, op_args, context).unpacking()
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    for key, value in wanted.items():
        if key in user_keys:
            kwargs[key] = plain_value(value)
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
    for key in FROM_TASK_INSTANCE:
        if key in params and key not in user_keys:
            kwargs[key] = getattr(context["ti"], key)
    for key, param in params.items():
        # A run triggered without a logical date has no logical_date, ds, data_interval_*...:
        # a function that names one gets None rather than a TypeError about its signature.
        # (The user's own arguments were merged into the context above.)
        if key not in kwargs and key in Context.__annotations__ and key not in context and param.default is inspect.Parameter.empty:
            kwargs[key] = None
    args = [plain_value(a) for a in op_args]
    return coerce_rendered(fn, args, kwargs, where_)
