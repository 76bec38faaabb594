"""Routing rules: a small, safe expression grammar over a task's resources.

    when: "gpu > 0"
    when: "memory > 64Gi and cpu >= 8"
    when: "gpu_type == 'a100' or (gpu >= 2 and not timeout < 1h)"

Fields: cpu (cores), memory, disk, shm (bytes), gpu (count), timeout (seconds), gpu_type
(text). An undeclared number counts as 0 and an undeclared gpu_type as ''. Values take the
same notation as the declarations ('500m', '4Gi', '2h'). Expressions are parsed once into
a tree of plain tuples and evaluated by walking it: there is no eval anywhere.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_infra.errors import InfraConfigError, where
from airflow_infra.quantities import format_bytes, parse_bytes, parse_cpu, parse_seconds
from airflow_infra.spec import Resources

if TYPE_CHECKING:
    from airflow_infra.config import InfraConfig

_NUMERIC: dict[str, Callable[[str], float]] = {
    "cpu": lambda v: parse_cpu(v) / 1000,
    "memory": parse_bytes,
    "disk": parse_bytes,
    "shm": parse_bytes,
    "gpu": lambda v: int(v) if v.isdigit() else _bad_count(v),
    "timeout": parse_seconds,
}
_TEXT = {"gpu_type"}
FIELDS = tuple(sorted([*_NUMERIC, *_TEXT]))
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
_TOKEN = re.compile(r"\s*(?:(?P<op>>=|<=|==|!=|>|<)|(?P<paren>[()])|(?P<str>'[^']*'|\"[^\"]*\")|(?P<word>[A-Za-z0-9_.+-]+))")


def _bad_count(value: str) -> int:
    raise ValueError(f"gpu is compared with a whole number, got {value!r}")


class RuleSyntaxError(ValueError):
    pass


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise RuleSyntaxError(f"unexpected character {text[pos:].strip()[:1]!r} at position {pos}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


MAX_RULE_LENGTH = 500
MAX_RULE_NESTING = 8


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise RuleSyntaxError("the expression ends too early")
        self.i += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token == ("word", word):
            self.i += 1
            return True
        return False

    def parse(self) -> tuple:
        tree = self.or_()
        if self.peek() is not None:
            raise RuleSyntaxError(f"unexpected {self.peek()[1]!r}")
        return tree

    def or_(self) -> tuple:
        node = self.and_()
        while self.keyword("or"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> tuple:
        node = self.not_()
        while self.keyword("and"):
            node = ("and", node, self.not_())
        return node

    def not_(self) -> tuple:
        if self.keyword("not"):
            return ("not", self.not_())
        if self.peek() == ("paren", "("):
            self.take()
            node = self.or_()
            if self.peek() != ("paren", ")"):
                raise RuleSyntaxError("missing ')'")
            self.take()
            return node
        return self.comparison()

    def comparison(self) -> tuple:
        kind, field = self.take()
        if kind != "word" or field not in FIELDS:
            raise RuleSyntaxError(f"{field!r} is not a field; use one of {', '.join(FIELDS)}")
        kind, op = self.take()
        if kind != "op":
            raise RuleSyntaxError(f"expected a comparison (> >= < <= == !=) after {field!r}, got {op!r}")
        kind, raw = self.take()
        if kind not in ("word", "str"):
            raise RuleSyntaxError(f"expected a value after {field} {op}, got {raw!r}")
        raw = raw[1:-1] if kind == "str" else raw
        if field in _TEXT:
            if op not in ("==", "!="):
                raise RuleSyntaxError(f"{field} is text: compare it with == or !=")
            return ("cmp", field, op, raw)
        try:
            return ("cmp", field, op, _NUMERIC[field](raw))
        except (ValueError, OverflowError) as exc:
            raise RuleSyntaxError(f"bad value for {field}: {exc}") from None


def _evaluate(node: tuple, values: dict[str, Any]) -> bool:
    head = node[0]
    if head == "or":
        return _evaluate(node[1], values) or _evaluate(node[2], values)
    if head == "and":
        return _evaluate(node[1], values) and _evaluate(node[2], values)
    if head == "not":
        return not _evaluate(node[1], values)
    _, field, op, expected = node
    return _OPS[op](values[field], expected)


@dataclass(frozen=True)
class Condition:
    """A compiled `when:` expression."""

    text: str
    tree: tuple

    @classmethod
    def compile(cls, text: str) -> Condition:
        # Bounded before parsing: the parser recurses once per parenthesis, and a rule is
        # evaluated for every task routed.
        if len(text) > MAX_RULE_LENGTH:
            raise RuleSyntaxError(f"longer than {MAX_RULE_LENGTH} characters: split it into several rules")
        depth = deepest = 0
        for char in text:
            depth += (char == "(") - (char == ")")
            deepest = max(deepest, depth)
        if deepest > MAX_RULE_NESTING:
            raise RuleSyntaxError(f"parentheses nested {deepest} deep; at most {MAX_RULE_NESTING}")
        return cls(text=text, tree=_Parser(text).parse())

    def matches(self, resources: Resources) -> bool:
        return _evaluate(self.tree, rule_values(resources))


def rule_values(resources: Resources) -> dict[str, Any]:
    """The values rules see: undeclared numbers are 0, an undeclared gpu_type is ''."""
    data = resources.model_dump()
    values: dict[str, Any] = {k: (data[k] or 0) for k in _NUMERIC}
    values["gpu_type"] = data["gpu_type"] or ""
    return values


def describe(resources: Resources) -> str:
    """Short human form of the declared resources, for routing reasons and logs."""
    data = resources.model_dump()
    parts = []
    for key, value in data.items():
        if value in (None, 0):
            continue
        parts.append(f"{key}={format_bytes(value) if key in ('memory', 'disk', 'shm') else value}")
    return ", ".join(parts) or "no resources declared"


FORCE_TARGET_ENV = "AIRFLOW_INFRA_TARGET"
LOCAL = "local"  # the built-in target every configuration has


@dataclass(frozen=True)
class Route:
    target: str
    reason: str


def route(config: InfraConfig, resources: Resources, hint: str, dag_id: str, task_id: str) -> Route:
    """Choose the target: the forcing variable, then the task's pin, then the first matching rule."""
    forced = os.environ.get(FORCE_TARGET_ENV)
    if forced:
        if forced not in config.targets:
            raise InfraConfigError(
                f"{FORCE_TARGET_ENV}={forced!r} names no target; known targets: {sorted(config.targets)}"
            )
        return Route(forced, f"{FORCE_TARGET_ENV} forces every task to {forced!r}")
    if hint != "auto":
        if hint not in config.targets:
            raise InfraConfigError(
                f"{where(dag_id, task_id)}: target={hint!r} is not among the configured targets {sorted(config.targets)}"
            )
        return Route(hint, f"the task pins target={hint!r}")
    if not config.rules:
        return Route(LOCAL, "no routing rules are configured: the built-in local target runs everything")
    for i, rule in enumerate(config.rules, 1):
        condition = rule.condition
        if condition is None:
            return Route(rule.target, f"rule {i} (catch-all) matched")
        if condition.matches(resources):
            return Route(rule.target, f"rule {i} {condition.text!r} matched ({describe(resources)})")
    raise InfraConfigError(
        f"{where(dag_id, task_id)}: no routing rule matched ({describe(resources)}); "
        "add a catch-all rule such as '- {target: k8s}' at the end of rules"
    )
