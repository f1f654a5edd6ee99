"""ACLs end to end: every HTTP endpoint × seven kinds of caller, with proof that denied writes change nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.procs import AgentProcess

ROOT_TOKEN = "root-secret-0123"
ANON_TEXT = "The anonymous token is used implicitly when a request does not specify a token."

READ_RULES = "\n".join(f'{r}_prefix "" {{ policy = "read" }}' for r in ("key", "service", "node", "session", "agent"))
WRITE_RULES = READ_RULES.replace('"read"', '"write"')
OTHER_RULES = "\n".join(f'{r}_prefix "other" {{ policy = "write" }}' for r in ("key", "service", "node", "session"))


def _acl_hcl(default_policy: str) -> str:
    return (f'acl {{\n enabled = true\n default_policy = "{default_policy}"\n token_min_expiration_ttl = "1s"\n'
            f' tokens {{\n  initial_management = "{ROOT_TOKEN}"\n }}\n}}\n')


def _start(tmp: Path, default_policy: str) -> AgentProcess:
    return AgentProcess(data_dir=tmp / default_policy, extra_args=["-hcl", _acl_hcl(default_policy)]).start(tmp)


def _root(agent: AgentProcess, method: str, path: str, **kwargs) -> requests.Response:
    resp = requests.request(method, agent.url + path, headers={"X-Consul-Token": ROOT_TOKEN}, timeout=10, **kwargs)
    assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp


def _make_token(agent: AgentProcess, name: str, rules: str, ttl: str | None = None) -> tuple[str, str]:
    policy = _root(agent, "PUT", "/v1/acl/policy", json={"Name": name, "Rules": rules}).json()
    body = {"Description": name, "Policies": [{"ID": policy["ID"]}]}
    if ttl:
        body["ExpirationTTL"] = ttl
    token = _root(agent, "PUT", "/v1/acl/token", json=body).json()
    return token["SecretID"], token["AccessorID"]


@dataclass
class Caller:
    name: str
    agent: AgentProcess
    secret: str | None
    accessor: str | None

    def allowed(self, resource: str, name: str, access: str) -> bool:
        if self.name in ("expired", "unknown"):
            return False
        if resource == "acl":
            return False
        return {"allow-anonymous": True, "deny-anonymous": False, "read": access in ("read", "list"),
                "write": True, "other-prefix": name.startswith("other")}[self.name]

    def denied_text(self, permission: str, target: str) -> str:
        if self.name in ("expired", "unknown"):
            return "ACL not found"
        if self.secret is None:
            return f"Permission denied: anonymous token lacks permission '{permission}'{target}. {ANON_TEXT}"
        return f"Permission denied: token with AccessorID '{self.accessor}' lacks permission '{permission}'{target}"

    def headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.secret} if self.secret else {}


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AgentProcess]]:
    tmp = tmp_path_factory.mktemp("acl")
    started = {"allow": _start(tmp, "allow"), "deny": _start(tmp, "deny")}
    yield started
    for agent in started.values():
        agent.stop()


@pytest.fixture(scope="module")
def callers(agents: dict[str, AgentProcess]) -> dict[str, Caller]:
    deny = agents["deny"]
    read = _make_token(deny, "read-all", READ_RULES)
    write = _make_token(deny, "write-all", WRITE_RULES)
    other = _make_token(deny, "other-prefix", OTHER_RULES)
    expired = _make_token(deny, "expiring", WRITE_RULES, ttl="1s")
    time.sleep(1.2)
    return {
        "allow-anonymous": Caller("allow-anonymous", agents["allow"], None, None),
        "deny-anonymous": Caller("deny-anonymous", deny, None, None),
        "read": Caller("read", deny, *read),
        "write": Caller("write", deny, *write),
        "other-prefix": Caller("other-prefix", deny, *other),
        "expired": Caller("expired", deny, *expired),
        "unknown": Caller("unknown", deny, str(uuid.uuid4()), None),
    }


CALLERS = ["allow-anonymous", "deny-anonymous", "read", "write", "other-prefix", "expired", "unknown"]


def _state(agent: AgentProcess) -> int:
    """The global write index: unchanged means nothing was written."""
    return int(_root(agent, "GET", "/v1/agent/self").json()["Stats"]["raft"]["applied_index"])


# ---------------------------------------------------------------- writes
# (method, path template, body, permission resource, target name, setup as root before the call)

WRITES = [
    ("PUT", "/v1/kv/app/{u}", "v", "key", "app/{u}", None),
    ("DELETE", "/v1/kv/app/{u}", None, "key", "app/{u}", ("PUT", "/v1/kv/app/{u}", "v")),
    ("DELETE", "/v1/kv/app/{u}/?recurse", None, "key", "app/{u}/", ("PUT", "/v1/kv/app/{u}/x", "v")),
    ("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-{u}", "Port": 80}, "service", "web", None),
    ("PUT", "/v1/agent/service/deregister/web-{u}", None, "service", "web",
     ("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-{u}"})),
    ("PUT", "/v1/agent/service/maintenance/web-{u}?enable=true", None, "service", "web",
     ("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-{u}"})),
    ("PUT", "/v1/agent/check/register", {"Name": "node-check-{u}", "TTL": "30s"}, "node", "node1", None),
    ("PUT", "/v1/agent/check/pass/ttl-{u}", None, "service", "web",
     ("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-{u}",
                                            "Check": {"CheckID": "ttl-{u}", "TTL": "30s"}})),
    ("PUT", "/v1/agent/maintenance?enable=true&reason={u}", None, "node", "node1", None),
    ("PUT", "/v1/catalog/register", {"Node": "node-{u}", "Address": "10.0.0.1"}, "node", "node-{u}", None),
    ("PUT", "/v1/catalog/register", {"Node": "node1", "Address": "127.0.0.1", "SkipNodeUpdate": True,
                                     "Service": {"Service": "web", "ID": "cat-{u}"}}, "service", "web", None),
    ("PUT", "/v1/catalog/deregister", {"Node": "node1", "ServiceID": "cat-{u}"}, "service", "web",
     ("PUT", "/v1/catalog/register", {"Node": "node1", "Address": "127.0.0.1", "SkipNodeUpdate": True,
                                      "Service": {"Service": "web", "ID": "cat-{u}"}})),
    ("PUT", "/v1/session/create", {"Name": "s-{u}"}, "session", "node1", None),
    ("PUT", "/v1/agent/check/deregister/ttl-{u}", None, "service", "web",
     ("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-{u}",
                                            "Check": {"CheckID": "ttl-{u}", "TTL": "30s"}})),
    ("PUT", "/v1/agent/check/warn/ttl-{u}", None, "service", "web",
     ("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web-{u}",
                                            "Check": {"CheckID": "ttl-{u}", "TTL": "30s"}})),
    ("PUT", "/v1/agent/check/fail/ttl-{u}", None, "node", "node1",
     ("PUT", "/v1/agent/check/register", {"CheckID": "ttl-{u}", "Name": "n", "TTL": "30s", "Status": "passing"})),
    ("PUT", "/v1/agent/check/update/ttl-{u}", {"Status": "warning", "Output": "o"}, "node", "node1",
     ("PUT", "/v1/agent/check/register", {"CheckID": "ttl-{u}", "Name": "n", "TTL": "30s"})),
    ("PUT", "/v1/session/destroy/{id}", None, "session", "node1", ("PUT", "/v1/session/create", {"Name": "{u}"})),
    ("PUT", "/v1/session/renew/{id}", None, "session", "node1",
     ("PUT", "/v1/session/create", {"Name": "{u}", "TTL": "60s"})),
    ("PUT", "/v1/agent/reload", None, "agent", "node1", None),
    ("PUT", "/v1/agent/leave", None, "agent", "node1", None),
    ("PUT", "/v1/acl/policy", {"Name": "p-{u}", "Rules": ""}, "acl", "", None),
    ("PUT", "/v1/acl/policy/{id}", {"Name": "p-{u}", "Rules": 'key "x" { policy = "read" }'}, "acl", "",
     ("PUT", "/v1/acl/policy", {"Name": "p-{u}", "Rules": ""})),
    ("DELETE", "/v1/acl/policy/{id}", None, "acl", "", ("PUT", "/v1/acl/policy", {"Name": "p-{u}", "Rules": ""})),
    ("PUT", "/v1/acl/token", {"Description": "t-{u}"}, "acl", "", None),
    ("PUT", "/v1/acl/token/{id}", {"Description": "renamed-{u}"}, "acl", "",
     ("PUT", "/v1/acl/token", {"Description": "t-{u}"})),
    ("DELETE", "/v1/acl/token/{id}", None, "acl", "", ("PUT", "/v1/acl/token", {"Description": "t-{u}"})),
]

#: Writes that are allowed yet leave the store as it was (they renew or re-read something).
NO_STATE_CHANGE = {"/v1/session/renew/{id}", "/v1/agent/reload", "/v1/agent/leave"}


def _fill(value, u: str):
    if isinstance(value, str):
        return value.replace("{u}", u)
    if isinstance(value, dict):
        return {k: _fill(v, u) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_fill(v, u) for v in value)
    return value


def _send(caller: Caller, method: str, path: str, body) -> requests.Response:
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    return requests.request(method, caller.agent.url + path, headers=caller.headers(), timeout=10, **kwargs)


@pytest.mark.parametrize("caller_name", CALLERS)
@pytest.mark.parametrize("case", WRITES, ids=[f"{m} {p.split('?')[0]}" for m, p, *_ in WRITES])
def test_write_endpoint(callers: dict[str, Caller], caller_name: str, case: tuple) -> None:
    caller = callers[caller_name]
    method, path, body, resource, target, setup = case
    u = uuid.uuid4().hex[:8]
    path, body, target = _fill(path, u), _fill(body, u), _fill(target, u)
    if setup is not None:
        s_method, s_path, s_body = _fill(setup, u)
        kwargs = {"json": s_body} if isinstance(s_body, dict) else {"data": s_body}
        created = _root(caller.agent, s_method, s_path, **kwargs)
        if created.content and isinstance(created.json(), dict):
            reply = created.json()
            path = path.replace("{id}", reply.get("AccessorID") or reply.get("ID", ""))
    before = _state(caller.agent)
    resp = _send(caller, method, path, body)
    if caller.allowed(resource, target, "write"):
        assert resp.status_code == 200, resp.text
        if case[1] not in NO_STATE_CHANGE:
            assert _state(caller.agent) > before, "an allowed write changed nothing"
    else:
        assert resp.status_code == 403, resp.text
        permission = f"{resource}:write"
        where = "" if resource == "acl" else f' on "{target}"'
        assert resp.text == caller.denied_text(permission, where)
        assert _state(caller.agent) == before, "a denied write changed the store"


# ---------------------------------------------------------------- reads


@pytest.fixture(scope="module")
def seeded(agents: dict[str, AgentProcess]) -> None:
    for agent in agents.values():
        _root(agent, "PUT", "/v1/kv/app/seed", data="v")
        _root(agent, "PUT", "/v1/kv/other/seed", data="v")
        _root(agent, "PUT", "/v1/agent/service/register", json={"Name": "web", "ID": "web-seed",
                                                                 "Check": {"TTL": "300s"}})
        _root(agent, "PUT", "/v1/agent/service/register", json={"Name": "other-web", "ID": "other-seed"})
        _root(agent, "PUT", "/v1/session/create", json={"Name": "seed"})


# (path, kind, permission resource, target, how to find the target in the body)
READS = [
    ("/v1/kv/app/seed", "single", "key", "app/seed", None),
    ("/v1/kv/app/?recurse", "list", "key", "app/seed", lambda b: [e["Key"] for e in b or []]),
    ("/v1/kv/?keys", "list", "key", "app/seed", lambda b: b or []),
    ("/v1/catalog/services", "list", "service", "web", lambda b: list(b)),
    ("/v1/catalog/service/web", "list", "service", "web", lambda b: [e["ServiceName"] for e in b]),
    ("/v1/catalog/nodes", "list", "node", "node1", lambda b: [n["Node"] for n in b]),
    ("/v1/catalog/node/node1", "list", "node", "node1", lambda b: [b["Node"]["Node"]] if b else []),
    ("/v1/health/service/web", "list", "service", "web", lambda b: [e["Service"]["Service"] for e in b]),
    ("/v1/health/checks/web", "list", "service", "web", lambda b: [c["ServiceName"] for c in b]),
    ("/v1/health/node/node1", "list", "node", "node1", lambda b: [c["Node"] for c in b]),
    ("/v1/health/state/any", "list", "node", "node1", lambda b: [c["Node"] for c in b]),
    ("/v1/agent/services", "list", "service", "web", lambda b: [s["Service"] for s in b.values()]),
    ("/v1/agent/checks", "list", "node", "node1", lambda b: [c["Node"] for c in b.values()]),
    ("/v1/agent/members", "list", "node", "node1", lambda b: [m["Name"] for m in b]),
    ("/v1/session/list", "list", "session", "node1", lambda b: [s["Node"] for s in b]),
    ("/v1/agent/self", "single", "agent", "node1", None),
    ("/v1/acl/tokens", "single", "acl", "", None),
    ("/v1/acl/policies", "single", "acl", "", None),
    ("/v1/kv/app/seed?raw", "single", "key", "app/seed", None),
    ("/v1/agent/service/web-seed", "single", "service", "web", None),
    ("/v1/catalog/node-services/node1", "list", "node", "node1", lambda b: [b["Node"]["Node"]] if b else []),
    ("/v1/session/node/node1", "list", "session", "node1", lambda b: [s["Node"] for s in b]),
    ("/v1/status/leader", "open", "", "", None),
    ("/v1/status/peers", "open", "", "", None),
    ("/v1/catalog/datacenters", "open", "", "", None),
]


@pytest.mark.parametrize("caller_name", CALLERS)
@pytest.mark.parametrize("case", READS, ids=[c[0] for c in READS])
def test_read_endpoint(callers: dict[str, Caller], seeded: None, caller_name: str, case: tuple) -> None:
    caller = callers[caller_name]
    path, kind, resource, target, names = case
    resp = requests.get(caller.agent.url + path, headers=caller.headers(), timeout=10)
    if kind == "open":  # status and datacenters take no token, as in Consul
        assert resp.status_code == 200, resp.text
        return
    if caller.name in ("expired", "unknown"):
        assert (resp.status_code, resp.text) == (403, "ACL not found")
        return
    allowed = caller.allowed(resource, target, "read")
    if kind == "single":
        if allowed:
            assert resp.status_code == 200, resp.text
        else:
            where = "" if resource == "acl" else f' on "{target}"'
            assert (resp.status_code, resp.text) == (403, caller.denied_text(f"{resource}:read", where))
        return
    assert resp.status_code in (200, 404), resp.text  # lists are filtered, never refused
    body = resp.json() if resp.status_code == 200 and resp.content else None
    found = target in names(body) if body is not None else False
    assert found == allowed, f"{path}: target visible={found}, expected {allowed}"
    if not allowed and caller.secret is not None:
        assert resp.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"


# ---------------------------------------------------------------- the rest


def test_bootstrap_once_then_403(tmp_path: Path) -> None:
    hcl = 'acl {\n enabled = true\n default_policy = "deny"\n}\n'
    agent = AgentProcess(data_dir=tmp_path / "b", extra_args=["-hcl", hcl]).start(tmp_path)
    try:
        first = requests.put(agent.url + "/v1/acl/bootstrap")
        assert first.status_code == 200
        token = first.json()
        assert token["Policies"] == [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
        assert token["Description"] == "Bootstrap Token (Global Management)" and token["ID"] == token["SecretID"]
        again = requests.put(agent.url + "/v1/acl/bootstrap")
        assert again.status_code == 403 and "ACL bootstrap no longer allowed" in again.text
        me = requests.get(agent.url + "/v1/acl/token/self", headers={"Authorization": f"Bearer {token['SecretID']}"})
        assert me.json()["AccessorID"] == token["AccessorID"]
        assert requests.get(agent.url + f"/v1/kv/x?token={token['SecretID']}").status_code == 404
    finally:
        agent.stop()


def test_acl_endpoints_answer_401_when_disabled(shared_agent: AgentProcess) -> None:
    resp = requests.put(shared_agent.url + "/v1/acl/bootstrap")
    assert (resp.status_code, resp.text) == (401, "ACL support disabled")


def test_token_crud_and_expiry(agents: dict[str, AgentProcess]) -> None:
    agent = agents["deny"]
    secret, accessor = _make_token(agent, "crud", 'key "crud" { policy = "write" }', ttl="2s")
    assert requests.put(agent.url + "/v1/kv/crud", data="1", headers={"X-Consul-Token": secret}).json() is True
    listed = _root(agent, "GET", "/v1/acl/tokens").json()
    assert accessor in [t["AccessorID"] for t in listed]
    updated = _root(agent, "PUT", f"/v1/acl/token/{accessor}", json={"Description": "renamed"}).json()
    assert updated["Description"] == "renamed" and updated["SecretID"] == secret
    time.sleep(2.2)
    expired = requests.put(agent.url + "/v1/kv/crud", data="2", headers={"X-Consul-Token": secret})
    assert (expired.status_code, expired.text) == (403, "ACL not found")
    assert _root(agent, "DELETE", f"/v1/acl/token/{accessor}").json() is True


def test_invalid_rules_are_refused(agents: dict[str, AgentProcess]) -> None:
    resp = requests.put(agents["deny"].url + "/v1/acl/policy", headers={"X-Consul-Token": ROOT_TOKEN},
                        data=json.dumps({"Name": "bad", "Rules": 'key_prefix "x" { policy = "sudo" }'}))
    assert resp.status_code == 400 and "Invalid Policy" in resp.text


def test_longest_prefix_and_exact_rules(agents: dict[str, AgentProcess]) -> None:
    agent = agents["deny"]
    secret, _ = _make_token(agent, "layered", 'key_prefix "" { policy = "read" }\n'
                                              'key_prefix "svc/" { policy = "write" }\n'
                                              'key_prefix "svc/locked/" { policy = "deny" }\n'
                                              'key "svc/locked/open" { policy = "write" }\n')
    headers = {"X-Consul-Token": secret}

    def put(key: str) -> int:
        return requests.put(f"{agent.url}/v1/kv/{key}", data="v", headers=headers).status_code

    assert put("svc/a") == 200
    assert put("svc/locked/b") == 403
    assert put("svc/locked/open") == 200
    assert put("elsewhere") == 403
    assert requests.delete(f"{agent.url}/v1/kv/svc/?recurse", headers=headers).status_code == 403


def test_secrets_never_reach_the_log(agents: dict[str, AgentProcess]) -> None:
    agent = agents["deny"]
    secret = "do-not-log-" + uuid.uuid4().hex
    requests.get(f"{agent.url}/v1/kv/x?token={secret}")
    requests.get(f"{agent.url}/v1/kv/x", headers={"X-Consul-Token": secret})
    requests.put(f"{agent.url}/v1/acl/token", headers={"X-Consul-Token": ROOT_TOKEN},
                 json={"Description": "logged?", "SecretID": secret})
    assert secret not in agent.log() and ROOT_TOKEN not in agent.log()


def test_dns_follows_the_anonymous_tokens_service_read(tmp_path: Path) -> None:
    import dns.message
    import dns.query
    import dns.rcode

    agent = _start(tmp_path, "deny")
    try:
        _root(agent, "PUT", "/v1/agent/service/register",
              json={"Name": "dnsweb", "ID": "dnsweb-1", "Address": "127.0.0.7", "Port": 80})

        def ask() -> dns.message.Message:
            query = dns.message.make_query("dnsweb.service.consul", "A")
            return dns.query.udp(query, "127.0.0.1", port=agent.dns_port, timeout=5)

        assert ask().rcode() == dns.rcode.NXDOMAIN  # anonymous may not read the service
        policy = _root(agent, "PUT", "/v1/acl/policy", json={
            "Name": "dns-read", "Rules": 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'})
        _root(agent, "PUT", "/v1/acl/token/00000000-0000-0000-0000-000000000002",
              json={"Description": "Anonymous Token", "Policies": [{"ID": policy.json()["ID"]}]})
        answer = ask()
        assert answer.rcode() == dns.rcode.NOERROR
        assert [rr.to_text() for rrset in answer.answer for rr in rrset] == ["127.0.0.7"]
    finally:
        agent.stop()


def test_a_write_cannot_take_over_records_it_may_not_write(agents: dict[str, AgentProcess]) -> None:
    """Reusing another service's ID, or a node check's ID, is a write on that record too (as Consul)."""
    agent = agents["deny"]
    secret, _ = _make_token(agent, "web-only", 'service "web" { policy = "write" }')
    headers = {"X-Consul-Token": secret}
    _root(agent, "PUT", "/v1/agent/service/register", json={"Name": "vault", "ID": "vault-1", "Port": 1})
    _root(agent, "PUT", "/v1/agent/service/register", json={"Name": "web", "ID": "web-own", "Port": 2})
    _root(agent, "PUT", "/v1/catalog/register", json={"Node": "ext-db", "Address": "10.0.0.9",
                                                      "Service": {"Service": "db", "ID": "db-1"}})
    before = _state(agent)
    attempts = [
        ("/v1/agent/service/register", {"Name": "web", "ID": "vault-1"}, "service:write' on \"vault\""),
        ("/v1/agent/service/register", {"Name": "web", "ID": "web-x", "Check": {"CheckID": "serfHealth",
                                                                                "TTL": "10s"}},
         "node:write' on \"node1\""),
        ("/v1/agent/check/register", {"CheckID": "serfHealth", "Name": "x", "ServiceID": "web-own",
                                      "TTL": "10s", "Status": "critical"}, "node:write' on \"node1\""),
        ("/v1/catalog/register", {"Node": "ext-db", "Address": "10.0.0.9", "SkipNodeUpdate": True,
                                  "Service": {"Service": "web", "ID": "db-1"}}, "service:write' on \"db\""),
    ]
    for path, body, expected in attempts:
        resp = requests.put(agent.url + path, json=body, headers=headers, timeout=10)
        assert resp.status_code == 403 and expected in resp.text, (path, resp.status_code, resp.text)
    assert _state(agent) == before
    services = _root(agent, "GET", "/v1/agent/services").json()
    assert services["vault-1"]["Service"] == "vault"
    serf = _root(agent, "GET", "/v1/agent/checks").json()["serfHealth"]
    assert (serf["Status"], serf["ServiceID"]) == ("passing", "")
