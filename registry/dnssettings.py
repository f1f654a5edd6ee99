"""The DNS interface's settings: Consul's `dns_config` block, domain, datacenter and recursors.

Kept apart from the server and the answer builder because both read it, and because turning config
values into settings is its own job: Consul accepts durations as "30s" or bare seconds, booleans as
strings, and counts that may be wrong; a bad value is logged and replaced by Consul's default so a
typo in the config never stops the agent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from registry.durations import DurationError, parse_duration

log = logging.getLogger("registry.dns")


@dataclass
class DnsSettings:
    """The agent's DNS configuration (Consul's `dns_config` block plus domain and recursors)."""

    domain: str = "consul."
    datacenter: str = "dc1"
    advertise: str = "127.0.0.1"
    recursors: list[tuple[str, int]] = field(default_factory=list)
    recursor_timeout: float = 2.0
    only_passing: bool = False
    node_ttl: int = 0
    service_ttl: dict[str, int] = field(default_factory=dict)
    udp_answer_limit: int = 3
    a_record_limit: int = 0
    enable_truncate: bool = False
    soa: tuple[int, int, int, int] = (3600, 600, 86400, 0)  # refresh, retry, expire, min_ttl

    @classmethod
    def from_agent_config(cls, config: Any) -> DnsSettings:
        dns_config = dict(config.dns_config or {})
        soa = dict(dns_config.get("soa") or {})
        return cls(
            domain=config.domain, datacenter=config.datacenter, advertise=config.bind_addr,
            recursors=[_recursor_address(r) for r in config.recursors],
            recursor_timeout=_seconds(dns_config.get("recursor_timeout", "2s")) or 2.0,
            only_passing=_boolean(dns_config.get("only_passing", False)),
            node_ttl=int(_seconds(dns_config.get("node_ttl", 0))),
            service_ttl={k.lower(): int(_seconds(v))
                         for k, v in (dns_config.get("service_ttl") or {}).items()},
            udp_answer_limit=max(1, _integer(dns_config, "udp_answer_limit", 3)),
            a_record_limit=max(0, _integer(dns_config, "a_record_limit", 0)),
            enable_truncate=_boolean(dns_config.get("enable_truncate", False)),
            soa=(_integer(soa, "refresh", 3600), _integer(soa, "retry", 600), _integer(soa, "expire", 86400),
                 _integer(soa, "min_ttl", 0)))

    def ttl_for_service(self, name: str) -> int:
        """Exact name, then the longest `prefix*` pattern, then `*` (Consul's service_ttl rules)."""
        if name in self.service_ttl:
            return self.service_ttl[name]
        best = None
        for pattern, ttl in self.service_ttl.items():
            if pattern.endswith("*") and name.startswith(pattern[:-1]) \
                    and (best is None or len(pattern) > best[0]):
                best = (len(pattern), ttl)
        return best[1] if best else 0


def _seconds(value: object) -> float:
    if isinstance(value, str) and value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parse_duration(value))
    except DurationError:
        log.warning("dns_config: ignoring invalid duration %r", value)
        return 0.0


def _integer(section: dict, key: str, default: int) -> int:
    """A non-negative count from the config; a bad value is logged and replaced by Consul's default."""
    try:
        return max(0, int(section.get(key, default)))
    except (TypeError, ValueError):
        log.warning("dns_config: ignoring invalid %s %r", key, section.get(key))
        return default


def _boolean(value: object) -> bool:
    return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


def _recursor_address(text: str) -> tuple[str, int]:
    """'8.8.8.8', '8.8.8.8:53', '[::1]:5353' → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, int(port.lstrip(":") or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53
