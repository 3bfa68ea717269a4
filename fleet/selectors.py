"""Label selectors (``region=eu, hw in (rpi4, jetson), !beta``): a pure parser and predicate.

No Django here: the manifest path evaluates cohorts against a labels dict with :func:`predicate`,
and ``fleet.services.selector_q`` compiles the same AST to a database query, so both agree.

Grammar (comma means AND; an empty selector matches every device)::

    selector    := [requirement ("," requirement)*]
    requirement := "!" key | key | key ("=" | "==" | "!=") value
                 | key ("in" | "notin") "(" value ("," value)* ")"

``k!=v`` and ``k notin (...)`` also match devices without the label ``k`` (as Kubernetes does).
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

EXISTS, NOT_EXISTS, EQ, NE, IN, NOTIN = "exists", "!exists", "=", "!=", "in", "notin"
MAX_LENGTH = 500
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*")


class SelectorError(ValueError):
    """A parse error with the 0-based character ``position`` where it went wrong."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position + 1})")
        self.message, self.position = message, position


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == EXISTS:
            return self.key
        if self.op == NOT_EXISTS:
            return f"!{self.key}"
        if self.op in (EQ, NE):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({', '.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.requirements)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def word(self, what: str) -> str:
        self.ws()
        m = _WORD.match(self.s, self.i)
        if not m:
            found = repr(self.s[self.i]) if self.i < len(self.s) else "the end"
            raise SelectorError(f"expected {what}, found {found}", self.i)
        self.i = m.end()
        return m.group(0)

    def peek(self, token: str) -> bool:
        self.ws()
        return self.s.startswith(token, self.i)

    def expect(self, token: str) -> None:
        if not self.peek(token):
            found = repr(self.s[self.i]) if self.i < len(self.s) else "the end"
            raise SelectorError(f"expected {token!r}, found {found}", self.i)
        self.i += len(token)

    def values(self) -> tuple[str, ...]:
        self.expect("(")
        vals = [self.word("a value")]
        while self.peek(","):
            self.i += 1
            vals.append(self.word("a value"))
        self.expect(")")
        return tuple(dict.fromkeys(vals))

    def requirement(self) -> Requirement:
        if self.peek("!") and not self.peek("!="):
            self.i += 1
            return Requirement(self.word("a label key after '!'"), NOT_EXISTS)
        key = self.word("a label key")
        self.ws()
        for tok, op in (("==", EQ), ("!=", NE), ("=", EQ)):
            if self.peek(tok):
                self.i += len(tok)
                return Requirement(key, op, (self.word("a value"),))
        start = self.i
        m = _WORD.match(self.s, self.i)
        if m and m.group(0) in (IN, NOTIN):
            self.i = m.end()
            return Requirement(key, m.group(0), self.values())
        if self.i < len(self.s) and not self.peek(","):
            raise SelectorError("expected '=', '!=', 'in', 'notin' or ','", start)
        return Requirement(key, EXISTS)

    def selector(self) -> Selector:
        self.ws()
        if self.i == len(self.s):
            return Selector(())
        reqs = [self.requirement()]
        while True:
            self.ws()
            if self.i == len(self.s):
                return Selector(tuple(reqs))
            self.expect(",")
            reqs.append(self.requirement())


def parse(text: str) -> Selector:
    """Parse ``text`` or raise :class:`SelectorError` naming the position."""
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"a selector is at most {MAX_LENGTH} characters", MAX_LENGTH)
    return _Parser(text).selector()


def _req_predicate(r: Requirement) -> Callable[[Mapping[str, Any]], bool]:
    k, vals = r.key, frozenset(r.values)
    if r.op == EXISTS:
        return lambda labels: k in labels
    if r.op == NOT_EXISTS:
        return lambda labels: k not in labels
    if r.op in (EQ, IN):
        return lambda labels: k in labels and str(labels[k]) in vals
    return lambda labels: k not in labels or str(labels[k]) not in vals  # NE, NOTIN


def predicate(selector: Selector) -> Callable[[Mapping[str, Any]], bool]:
    """A function ``labels -> bool`` for ``selector`` (no database)."""
    preds = [_req_predicate(r) for r in selector.requirements]
    return lambda labels: all(p(labels) for p in preds)
