"""ACL tokens, policies and their rules: who may read or write which key, service, node or session.

Rules are Consul's (HCL or JSON): `key_prefix "app/" { policy = "write" }`, `service "web" { policy =
"read" }`, bare `acl = "write"`. For one resource an exact rule beats every prefix rule, otherwise the
longest matching prefix wins; among a token's policies at the same specificity deny > write > read;
with no match the agent's default policy decides. Management tokens (linked to the built-in
global-management policy) may do anything. Secrets are never logged: errors name AccessorIDs only.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from registry.config import hcl_loads
from registry.durations import parse_duration

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"
MANAGEMENT_POLICY_NAME = "global-management"

RESOURCES = ("key", "service", "node", "session", "agent", "event", "query")
BARE = ("acl", "operator", "keyring", "mesh", "peering")
#: Ordered access levels; "list" (key_prefix only) allows listing keys but not reading values.
LEVELS = {"deny": 0, "list": 1, "read": 2, "write": 3}


class RuleError(ValueError):
    """Rules that do not parse or name an unknown policy."""


@dataclass
class Rules:
    """One policy's parsed rules."""

    exact: dict[str, dict[str, str]] = field(default_factory=dict)
    prefix: dict[str, dict[str, str]] = field(default_factory=dict)
    bare: dict[str, str] = field(default_factory=dict)


def _labelled(value: Any, where: str) -> dict[str, str]:
    """`{name: {policy: x}}` from HCL (a list of such maps) or JSON (one map)."""
    items = value if isinstance(value, list) else [value]
    result: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            raise RuleError(f"{where}: expected a labelled block")
        for name, body in item.items():
            body = body[0] if isinstance(body, list) and body else body
            policy = body.get("policy") if isinstance(body, dict) else None
            if policy not in LEVELS or (policy == "list" and where != "key_prefix"):
                raise RuleError(f'Invalid {where} policy for "{name}": {policy!r}')
            result[name] = policy
    return result


def parse_rules(text: str) -> Rules:
    """Consul rule syntax (HCL, or JSON) → Rules; RuleError says what is wrong."""
    text = text or ""
    if not text.strip():
        return Rules()
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else hcl_loads(text)
    except Exception as exc:  # noqa: BLE001 - HCL and JSON parsers raise several kinds
        raise RuleError(f"Failed to parse ACL rules: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    rules = Rules()
    for key, value in data.items():
        if key in BARE:
            if value not in LEVELS or value == "list":
                raise RuleError(f"Invalid {key} policy: {value!r}")
            rules.bare[key] = value
        elif key in RESOURCES:
            rules.exact[key] = _labelled(value, key)
        elif key.endswith("_prefix") and key[: -len("_prefix")] in RESOURCES:
            rules.prefix[key[: -len("_prefix")]] = _labelled(value, key)
        else:
            raise RuleError(f"Failed to parse ACL rules: unknown rule {key!r}")
    return rules


def _strongest(policies: list[str]) -> str:
    """Among rules of the same specificity: deny > write > read (> list)."""
    if "deny" in policies:
        return "deny"
    return max(policies, key=LEVELS.__getitem__)


@dataclass
class Authorizer:
    """The decisions for one token: its policies' rules plus the agent's default policy."""

    accessor: str
    rules: list[Rules]
    default_allow: bool
    management: bool = False
    enabled: bool = True

    @property
    def anonymous(self) -> bool:
        return self.accessor == ANONYMOUS_ACCESSOR

    def level(self, resource: str, name: str) -> str:
        if self.management or not self.enabled:
            return "write"
        exact = [r.exact[resource][name] for r in self.rules if name in r.exact.get(resource, {})]
        if exact:
            return _strongest(exact)
        best_len, found = -1, []
        for rules in self.rules:
            for prefix, policy in rules.prefix.get(resource, {}).items():
                if name.startswith(prefix):
                    if len(prefix) > best_len:
                        best_len, found = len(prefix), [policy]
                    elif len(prefix) == best_len:
                        found.append(policy)
        if found:
            return _strongest(found)
        return "write" if self.default_allow else "deny"

    def allowed(self, resource: str, name: str, access: str) -> bool:
        if resource in BARE:
            return self.bare_allowed(resource, access)
        return LEVELS[self.level(resource, name)] >= LEVELS[access]

    def bare_allowed(self, resource: str, access: str) -> bool:
        if self.management or not self.enabled:
            return True
        found = [r.bare[resource] for r in self.rules if resource in r.bare]
        if found:
            return LEVELS[_strongest(found)] >= LEVELS[access]
        # Consul's allow-all default never grants ACL management
        return self.default_allow and resource != "acl"

    def prefix_writable(self, resource: str, prefix: str) -> bool:
        """Write on a whole prefix (recursive KV delete): the prefix and every rule below it allow write."""
        if not self.allowed(resource, prefix, "write"):
            return False
        for rules in self.rules:
            for table in (rules.exact.get(resource, {}), rules.prefix.get(resource, {})):
                if any(n.startswith(prefix) and LEVELS[p] < LEVELS["write"] for n, p in table.items()):
                    return False
        return True


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def token_hash(record: dict[str, Any]) -> str:
    basis = json.dumps([record.get("Description"), record.get("Policies")], sort_keys=True)
    return hashlib.blake2b(basis.encode(), digest_size=16).hexdigest()


def new_token(description: str, policies: list[dict[str, str]], secret: str | None = None,
              accessor: str | None = None, ttl_seconds: float | None = None) -> dict[str, Any]:
    """A token record in Consul's shape (CreateIndex/ModifyIndex are set by the store writer)."""
    record: dict[str, Any] = {
        "AccessorID": accessor or str(uuid.uuid4()), "SecretID": secret or str(uuid.uuid4()),
        "Description": description, "Policies": policies, "Roles": [], "Local": False,
        "CreateTime": now_rfc3339(),
    }
    if ttl_seconds:
        record["ExpirationTTL"] = f"{ttl_seconds:g}s"
        record["ExpirationTime"] = datetime.fromtimestamp(time.time() + ttl_seconds, UTC).isoformat() \
            .replace("+00:00", "Z")
        record["_expires_at"] = time.time() + ttl_seconds
    record["Hash"] = token_hash(record)
    return record


def token_expired(record: dict[str, Any]) -> bool:
    expires = record.get("_expires_at")
    return bool(expires) and time.time() >= expires


class ACLNotFound(Exception):
    """An unknown or expired token: Consul answers 403 `ACL not found`."""


class ACLService:
    """Token resolution and the built-in records, over the store's acl_tokens / acl_policies tables."""

    def __init__(self, store: Any, settings: dict[str, Any]):
        self.store = store
        self.enabled = bool(settings.get("enabled", False))
        self.default_allow = str(settings.get("default_policy", "allow")) != "deny"
        tokens = settings.get("tokens") or {}
        self.initial_management = tokens.get("initial_management") or tokens.get("master") or ""
        self.default_token = tokens.get("default") or ""
        self.min_ttl = parse_duration(settings.get("token_min_expiration_ttl", "1m"))
        self.max_ttl = parse_duration(settings.get("token_max_expiration_ttl", "24h"))
        self._rules_cache: dict[tuple[str, int], Rules] = {}
        self._by_secret: dict[str, str] = {}
        self._by_secret_index = -1

    async def setup(self) -> None:
        """global-management, anonymous and the configured initial management token exist once ACLs are on."""
        if not self.enabled:
            return
        if MANAGEMENT_POLICY_ID not in self.store.acl_policies:
            await self.save_policy({"ID": MANAGEMENT_POLICY_ID, "Name": MANAGEMENT_POLICY_NAME,
                                    "Description": "Builtin Policy that grants unlimited access",
                                    "Rules": "", "Datacenters": None})
        if ANONYMOUS_ACCESSOR not in self.store.acl_tokens:
            await self.save_token(new_token("Anonymous Token", [], ANONYMOUS_SECRET, ANONYMOUS_ACCESSOR))
        if self.initial_management and self.find_secret(self.initial_management) is None:
            await self.save_token(new_token("Initial Management Token", self.management_link(),
                                            self.initial_management))

    def management_link(self) -> list[dict[str, str]]:
        return [{"ID": MANAGEMENT_POLICY_ID, "Name": MANAGEMENT_POLICY_NAME}]

    async def save_token(self, record: dict[str, Any]) -> dict[str, Any]:
        old = self.store.acl_tokens.get(record["AccessorID"])
        index = self.store.index + 1
        record = {**record, "CreateIndex": old["CreateIndex"] if old else index, "ModifyIndex": index}
        await self.store.put_record("acl_tokens", record["AccessorID"], record, "acl")
        return record

    async def save_policy(self, record: dict[str, Any]) -> dict[str, Any]:
        old = self.store.acl_policies.get(record["ID"])
        index = self.store.index + 1
        record = {**record, "Hash": hashlib.blake2b(record.get("Rules", "").encode(), digest_size=16).hexdigest(),
                  "CreateIndex": old["CreateIndex"] if old else index, "ModifyIndex": index}
        await self.store.put_record("acl_policies", record["ID"], record, "acl")
        return record

    def find_secret(self, secret: str) -> dict[str, Any] | None:
        if self._by_secret_index != self.store.topic_index("acl"):
            self._by_secret = {t["SecretID"]: a for a, t in self.store.acl_tokens.items()}
            self._by_secret_index = self.store.topic_index("acl")
        accessor = self._by_secret.get(secret)
        return self.store.acl_tokens.get(accessor) if accessor else None

    def policy_by_name(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.store.acl_policies.values() if p["Name"] == name), None)

    def _rules(self, policy: dict[str, Any]) -> Rules:
        key = (policy["ID"], policy["ModifyIndex"])
        if key not in self._rules_cache:
            self._rules_cache[key] = parse_rules(policy.get("Rules", ""))
        return self._rules_cache[key]

    def authorizer_for(self, token: dict[str, Any]) -> Authorizer:
        policies = [self.store.acl_policies.get(link.get("ID", "")) for link in token.get("Policies") or []]
        policies = [p for p in policies if p is not None]
        management = any(p["ID"] == MANAGEMENT_POLICY_ID for p in policies)
        return Authorizer(token["AccessorID"], [self._rules(p) for p in policies], self.default_allow, management)

    def resolve(self, secret: str | None) -> Authorizer:
        """The authorizer for a request's token (none given: the default token, then anonymous)."""
        if not self.enabled:
            return Authorizer(ANONYMOUS_ACCESSOR, [], True, enabled=False)
        secret = secret or self.default_token or ANONYMOUS_SECRET
        token = self.find_secret(secret)
        if token is None or token_expired(token):
            raise ACLNotFound()
        return self.authorizer_for(token)

    def anonymous(self) -> Authorizer:
        return self.resolve(None)

    def dns_allows_service(self, name: str) -> bool:
        """DNS answers follow the anonymous (or default) token's service:read."""
        return self.anonymous().allowed("service", name, "read")

    def dns_allows_node(self, name: str) -> bool:
        return self.anonymous().allowed("node", name, "read")
