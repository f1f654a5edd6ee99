"""Consul's `?filter` expressions (go-bexpr's documented grammar), compiled to predicates over wire JSON.

Consul evaluates the filter on the server against the very objects a list endpoint returns, so a client
that filters gets only the matching entries. This module re-implements the documented grammar (not
go-bexpr's code): selectors are paths into the JSON object as it goes on the wire (`Service.Meta.version`,
`Node.Meta["k"]`), resolved case-sensitively. Consul validates selectors against Go struct types; without
those we check only the first name of a selector against the fields the endpoint's objects have
(`roots`), and a deeper name that does not exist simply selects nothing.

Semantics where a selector passes through a list (`Checks.Status` on /v1/health/service): the selector
yields every element's value, a positive operator (`==`, `in`, `contains`, `matches`) holds when it holds
for any of them and its negation (`!=`, `not in`, ...) when it holds for none. A selector that finds
nothing makes `!=`, `not in`, `not contains`, `not matches` and `is empty` true, as documented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

#: A compiled filter: does this JSON object (one entry of a list, one value of a map) match?
Predicate = Callable[[Any], bool]

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<op>==|!=|\(|\)|\[|\]|\.)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)

_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "contains", "matches"}
_MISSING = object()


class FilterError(ValueError):
    """A filter that cannot be compiled; `text` is what Consul's 400 body says after its prefix."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass
class _Token:
    kind: str  # "op", "string", "number", "name", "end"
    text: str
    pos: int


def _tokens(source: str) -> list[_Token]:
    found, pos = [], 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            raise FilterError(f"1:{pos + 1} ({pos}): unexpected character {source[pos]!r}")
        if match.lastgroup != "space":
            found.append(_Token(match.lastgroup or "", match.group(), pos))
        pos = match.end()
    found.append(_Token("end", "", len(source)))
    return found


def _unquote(token: _Token) -> str:
    """Double-quoted strings expand escapes; backtick strings are raw, as the grammar documents."""
    if token.text.startswith("`"):
        return token.text[1:-1]
    try:
        return json.loads(token.text)
    except ValueError:
        raise FilterError(f"1:{token.pos + 1} ({token.pos}): invalid string literal {token.text}") from None


def compile_filter(source: str, roots: Collection[str] | None = None) -> Predicate:
    """The predicate for `source`; raises FilterError for bad syntax, a bad regex or an unknown selector."""
    return _Parser(_tokens(source), roots).parse()


def apply_filter(predicate: Predicate, body: Any) -> Any:
    """Lists keep their matching entries, maps (agent endpoints) their matching values, in order."""
    if isinstance(body, list):
        return [item for item in body if predicate(item)]
    if isinstance(body, dict):
        return {key: value for key, value in body.items() if predicate(value)}
    return body


class _Parser:
    """Recursive descent: or ← and ('or' and)*; and ← unary ('and' unary)*; unary ← 'not' unary |
    '(' or ')' | match. So `a and not b or c` is `(a and (not b)) or c`."""

    def __init__(self, tokens: list[_Token], roots: Collection[str] | None) -> None:
        self.tokens, self.at, self.roots = tokens, 0, roots

    def parse(self) -> Predicate:
        if self.peek().kind == "end":
            raise self.error("expected an expression")
        predicate = self.parse_or()
        if self.peek().kind != "end":
            raise self.error("expected 'and', 'or' or the end of the expression")
        return predicate

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.at += 1
        return token

    def is_word(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "name" and token.text == word

    def expect(self, text: str) -> None:
        if self.peek().text != text or self.peek().kind not in ("op", "name"):
            raise self.error(f"expected {text!r}")
        self.take()

    def error(self, message: str) -> FilterError:
        token = self.peek()
        found = repr(token.text) if token.kind != "end" else "end of input"
        return FilterError(f"1:{token.pos + 1} ({token.pos}): {message}, found {found}")

    def parse_or(self) -> Predicate:
        parts = [self.parse_and()]
        while self.is_word("or"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else (lambda obj: any(p(obj) for p in parts))

    def parse_and(self) -> Predicate:
        parts = [self.parse_unary()]
        while self.is_word("and"):
            self.take()
            parts.append(self.parse_unary())
        return parts[0] if len(parts) == 1 else (lambda obj: all(p(obj) for p in parts))

    def parse_unary(self) -> Predicate:
        if self.is_word("not"):
            self.take()
            inner = self.parse_unary()
            return lambda obj: not inner(obj)
        if self.peek().kind == "op" and self.peek().text == "(":
            self.take()
            inner = self.parse_or()
            self.expect(")")
            return inner
        return self.parse_match()

    def parse_match(self) -> Predicate:
        """`value [not] in selector`, or a selector followed by its operator."""
        token = self.peek()
        if token.kind in ("string", "number") or (token.kind == "name" and self._value_then_in()):
            value = self.parse_value()
            negate = self._optional_not()
            self.expect("in")
            return _negated(_contains(self.parse_selector(), value), negate)
        path = self.parse_selector()
        if self.peek().kind == "op" and self.peek().text in ("==", "!="):
            negate = self.take().text == "!="
            return _negated(_equals(path, self.parse_value()), negate)
        if self.is_word("is"):
            self.take()
            negate = self._optional_not()
            self.expect("empty")
            return _negated(_empty(path), negate)
        negate = self._optional_not()
        if self.is_word("contains"):
            self.take()
            return _negated(_contains(path, self.parse_value()), negate)
        if self.is_word("matches"):
            self.take()
            return _negated(_matches(path, self.parse_regex()), negate)
        raise self.error("expected '==', '!=', 'is', 'contains', 'matches', 'in' or 'not'")

    def _value_then_in(self) -> bool:
        """An unquoted value (a bare name, maybe dotted) before `in` / `not in`."""
        ahead = 1
        while self.peek(ahead).text == "." and self.peek(ahead + 1).kind == "name":
            ahead += 2
        return self.is_word("in", ahead) or (self.is_word("not", ahead) and self.is_word("in", ahead + 1))

    def _optional_not(self) -> bool:
        if self.is_word("not"):
            self.take()
            return True
        return False

    def parse_value(self) -> str:
        """Values: quoted strings, numbers, or bare selector-like words (kept as their text)."""
        token = self.peek()
        if token.kind == "string":
            return _unquote(self.take())
        if token.kind == "number":
            return self.take().text
        if token.kind == "name" and token.text not in _KEYWORDS:
            words = [self.take().text]
            while self.peek().text == "." and self.peek(1).kind == "name":
                self.take()
                words.append(self.take().text)
            return ".".join(words)
        raise self.error("expected a value")

    def parse_regex(self) -> re.Pattern[str]:
        token = self.peek()
        pattern = self.parse_value()
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise FilterError(f"1:{token.pos + 1} ({token.pos}): invalid regular expression: {exc}") from None

    def parse_selector(self) -> list[str]:
        """Name ('.' name | '[' string ']')*; the first name must be one of the endpoint's fields."""
        token = self.peek()
        if token.kind != "name" or token.text in _KEYWORDS:
            raise self.error("expected a selector")
        path = [self.take().text]
        if self.roots is not None and path[0] not in self.roots:
            raise FilterError(f'Selector "{path[0]}" is not valid')
        while self.peek().kind == "op" and self.peek().text in (".", "["):
            if self.take().text == ".":
                if self.peek().kind != "name":
                    raise self.error("expected a field name after '.'")
                path.append(self.take().text)
            else:
                if self.peek().kind != "string":
                    raise self.error("expected a quoted map key")
                path.append(_unquote(self.take()))
                self.expect("]")
        return path


def _negated(predicate: Predicate, negate: bool) -> Predicate:
    return (lambda obj: not predicate(obj)) if negate else predicate


def _select(obj: Any, path: list[str]) -> list[Any]:
    """Every value the path reaches: one for plain objects, one per element where it crosses a list."""
    current = [obj]
    for name in path:
        following = []
        for value in current:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and name in item:
                    following.append(item[name])
        current = following
    return current


def _same(field: Any, value: str) -> bool:
    """Consul coerces the value to the field's type: `Port == 80`, `EnableTagOverride == true`."""
    if isinstance(field, bool):
        return value in ("true", "false") and field == (value == "true")
    if isinstance(field, (int, float)):
        try:
            return field == float(value)
        except ValueError:
            return False
    if isinstance(field, str):
        return field == value
    return False


def _scalars(values: list[Any]) -> list[Any]:
    """A list at the end of a path (e.g. `Checks.ServiceTags`) is matched element by element."""
    flat: list[Any] = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    return flat


def _equals(path: list[str], value: str) -> Predicate:
    return lambda obj: any(_same(field, value) for field in _scalars(_select(obj, path)))


def _holds(field: Any, value: str) -> bool:
    if isinstance(field, str):
        return value in field
    if isinstance(field, dict):
        return value in field
    if isinstance(field, list):
        return any(_same(item, value) for item in field)
    return False


def _contains(path: list[str], value: str) -> Predicate:
    return lambda obj: any(_holds(field, value) for field in _select(obj, path))


def _is_empty(field: Any) -> bool:
    return field is None or (isinstance(field, (str, list, dict)) and len(field) == 0)


def _empty(path: list[str]) -> Predicate:
    return lambda obj: all(_is_empty(field) for field in _select(obj, path))


def _matches(path: list[str], pattern: re.Pattern[str]) -> Predicate:
    return lambda obj: any(isinstance(field, str) and pattern.search(field) is not None
                           for field in _scalars(_select(obj, path)))


#: The first selector names each endpoint's objects offer (their wire fields), for unknown-selector 400s.
NODE_FIELDS = ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta", "CreateIndex", "ModifyIndex")
CATALOG_SERVICE_FIELDS = (
    "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceKind", "ServiceID",
    "ServiceName", "ServiceTags", "ServiceAddress", "ServiceTaggedAddresses", "ServiceWeights", "ServiceMeta",
    "ServicePort", "ServiceSocketPath", "ServiceEnableTagOverride", "ServiceProxy", "ServiceConnect",
    "ServiceLocality", "CreateIndex", "ModifyIndex")
HEALTH_ENTRY_FIELDS = ("Node", "Service", "Checks")
CHECK_FIELDS = (
    "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags", "Type",
    "Interval", "Timeout", "ExposedPort", "Definition", "CreateIndex", "ModifyIndex")
AGENT_SERVICE_FIELDS = (
    "ID", "Service", "Tags", "Meta", "Port", "Address", "Weights", "EnableTagOverride", "Datacenter",
    "TaggedAddresses", "Kind", "Proxy", "Connect", "SocketPath", "Locality")
