"""Kubernetes quantity notation ("500m", "4Gi", "1.5G") and durations ("90s", "2h30m").

Pure functions, no imports beyond the standard library: they run at DAG parse time.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]{0,2})\s*\Z")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(d|h|m|s)")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _split(value: str) -> tuple[float, str]:
    match = _QUANTITY.match(value) if "\n" not in value and "\r" not in value else None  # `\s` would take them
    if not match:
        raise ValueError(f"{value!r} is not a quantity")
    number = float(match.group(1)) * (10 ** int(match.group(2)) if match.group(2) else 1)
    return number, match.group(3)


def _finite_non_negative(number: float, value: object) -> float:
    if isinstance(number, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} must be a finite, non-negative number")
    return number


def parse_cpu(value: str | int | float) -> int:
    """Cores as millicores: 2 -> 2000, "500m" -> 500, "1.5" -> 1500."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.ceil(_finite_non_negative(float(value), value) * 1000)
    if not isinstance(value, str):
        raise ValueError(f"expected cores as a number or a string like '500m' or '2', got {value!r}")
    try:
        number, unit = _split(value)
    except ValueError:
        raise ValueError(f"expected cores like 2, 0.5 or '500m', got {value!r}") from None
    if unit == "m":
        return math.ceil(number)
    if unit == "":
        return math.ceil(number * 1000)
    raise ValueError(f"expected cores like 2, 0.5 or '500m' (the only suffix is 'm'), got {value!r}")


def parse_bytes(value: str | int | float) -> int:
    """Bytes: 1024 -> 1024, "4Gi" -> 4 * 2**30, "1G" -> 10**9."""
    if type(value) is str:
        # The everyday form, digits and a binary suffix ("512Mi", "16Gi"), without the regex:
        # at DAG parse time, where every task may declare a memory of its own, this function
        # ran cold each time and the match was most of a new value's cost. Same result as below.
        digits, factor = value[:-2], _BINARY.get(value[-2:])
        if factor is not None and len(digits) <= 15 and digits.isascii() and digits.isdigit():
            return int(digits) * factor
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.ceil(_finite_non_negative(float(value), value))
    if not isinstance(value, str):
        raise ValueError(f"expected a size as bytes or a string like '512Mi' or '4Gi', got {value!r}")
    try:
        number, unit = _split(value)
    except ValueError:
        raise ValueError(f"expected a size like '512Mi', '4Gi', '1G' or a number of bytes, got {value!r}") from None
    if unit == "":
        return math.ceil(number)
    factor = _BINARY.get(unit) or _DECIMAL.get(unit)
    if factor is None:
        raise ValueError(
            f"unknown size suffix {unit!r} in {value!r}: use one of "
            f"{', '.join([*_BINARY, *_DECIMAL])} (e.g. '512Mi', '4Gi')"
        )
    return math.ceil(number * factor)


def parse_seconds(value: str | int | float | timedelta) -> float:
    """Seconds: 90 -> 90.0, timedelta(minutes=2) -> 120.0, "1h30m" -> 5400.0."""
    if isinstance(value, timedelta):
        return _finite_non_negative(value.total_seconds(), value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite_non_negative(float(value), value)
    if isinstance(value, str) and "\n" not in value and "\r" not in value:
        text = value.strip()
        try:
            return _finite_non_negative(float(text), value)
        except ValueError:
            pass
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"expected a duration like 3600, '90s', '2h30m' or a timedelta, got {value!r}")


def format_bytes(n: int | None) -> str:
    """A byte count in binary units: 4294967296 -> '4Gi', 250000000 -> '238.4Mi'."""
    if n is None:
        return "-"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _BINARY[suffix]
        if n >= factor:
            return f"{n // factor}{suffix}" if n % factor == 0 else f"{n / factor:.1f}{suffix}"
    return str(n)


def format_cpu(millicores: int | None) -> str:
    if millicores is None:
        return "-"
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"
