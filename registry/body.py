"""Request bodies as Consul decodes them, and Consul's request errors — free of any HTTP server code.

Check and service definitions arrive over HTTP and from config files alike, so their parsers use
these helpers without importing the HTTP layer.
"""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request Consul refuses: status and its exact text (text/plain body)."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def _norm(key: str) -> str:
    return key.lower().replace("_", "")


class Body:
    """A JSON object read with Consul's decoding: keys match case-insensitively, snake_case too."""

    def __init__(self, data: dict[str, Any], aliases: dict[str, str] | None = None):
        self.raw = data
        self._by_norm: dict[str, Any] = {}
        for key, value in data.items():
            norm = _norm(key)
            self._by_norm[(aliases or {}).get(norm, norm)] = value

    def get(self, name: str, default: Any = None) -> Any:
        value = self._by_norm.get(_norm(name), default)
        return default if value is None else value

    def has(self, name: str) -> bool:
        return self._by_norm.get(_norm(name)) is not None

    def sub(self, name: str, aliases: dict[str, str] | None = None) -> Body | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise RequestError(400, f"Request decode failed: {name} must be an object")
        return Body(value, aliases)


def typed(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    """Reject a wrong JSON type the way Go's decoder does (400)."""
    if value is None:
        return value
    if kind is int and isinstance(value, bool):
        raise RequestError(400, f"Request decode failed: {field}: expected a number")
    if not isinstance(value, kind):
        expected = getattr(kind, "__name__", "value")
        raise RequestError(400, f"Request decode failed: {field}: expected {expected}, "
                                f"got {type(value).__name__}")
    return value


def string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RequestError(400, f"Request decode failed: {field} must be a map of strings")
    return dict(value)


def string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(400, f"Request decode failed: {field} must be a list of strings")
    return list(value)


def require_strings(body: Body, *names: str) -> None:
    """Fields that must be JSON strings when present: a number there is a 400, never a stored record
    that later breaks every read of the catalog (or DNS) that meets it."""
    for name in names:
        typed(body.get(name), str, name)
