"""Bad input gets Consul's status and text, changes nothing, and never takes the agent down."""

from __future__ import annotations

import http.client

import pytest
import requests

from tests.procs import AgentProcess

BIG = b"x" * (512 * 1024 + 1)

# (method, path, body, expected status, expected text or a fragment of it)
CASES = [
    ("PUT", "/v1/agent/service/register", b"{not json", 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b"[1,2]", 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b"", 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b'{"ID": "x"}', 400, "Missing service name"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Port": "80"}', 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Tags": "a"}', 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Meta": {"k": 1}}', 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Meta": {"bad key": "v"}}', 400, "Invalid Service Meta"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Address": "0.0.0.0"}', 400, "Invalid service address"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Check": {"TTL": "nonsense"}}', 400,
     "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Check": {"HTTP": "http://a", "TTL": "1s"}}', 400,
     "Invalid check"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Check": {"GRPC": "a:1", "Interval": "1s"}}', 400,
     "Invalid check"),
    ("PUT", "/v1/agent/service/register?replace-existing-checks=maybe", b'{"Name": "x"}', 400, "Invalid value"),
    ("PUT", "/v1/agent/check/register", b'{"ServiceID": "nope", "Name": "c", "TTL": "10s"}', 404,
     'ServiceID "nope" does not exist'),
    ("PUT", "/v1/agent/check/register", b'{"TTL": "10s"}', 400, "Missing check name"),
    ("PUT", "/v1/agent/check/pass/nope", b"", 404, 'Unknown check ID "nope"'),
    ("PUT", "/v1/agent/check/update/nope", b'{"Status": "bogus"}', 400, "Invalid check status: 'bogus'"),
    ("PUT", "/v1/agent/service/maintenance/nope?enable=true", b"", 404, 'Unknown service ID "nope"'),
    ("PUT", "/v1/agent/maintenance", b"", 400, "Missing value for enable"),
    ("PUT", "/v1/agent/maintenance?enable=perhaps", b"", 400, 'Invalid value for enable: "perhaps"'),
    ("PUT", "/v1/catalog/register", b'{"Node": "n"}', 500, "Must provide node and address"),
    ("PUT", "/v1/catalog/register", b'{"Node": "n", "Address": "1.2.3.4", "Datacenter": "dc7"}', 500,
     "No path to datacenter"),
    ("PUT", "/v1/kv/", b"v", 400, "Missing key name"),
    ("GET", "/v1/kv/", None, 400, "Missing key name"),
    ("DELETE", "/v1/kv/", None, 400, "Missing key name"),
    ("PUT", "/v1/kv//leading-slash", b"v", 400, "Invalid key name"),
    ("PUT", "/v1/kv/a/../b", b"v", 400, "Invalid key name"),
    ("PUT", "/v1/kv/a/%2e%2e%2fb", b"v", 400, "Invalid key name"),
    ("PUT", "/v1/kv/a/..%2fb", b"v", 400, "Invalid key name"),
    ("PUT", "/v1/kv/%20spaced", b"v", 400, "Invalid key name"),
    ("PUT", "/v1/kv/big", BIG, 413, "too large, max size: 524288 bytes"),
    ("PUT", "/v1/kv/k?cas=1&acquire=abc", b"v", 400, "Conflicting flags: acquire=abc&cas=1\n"),
    ("PUT", "/v1/kv/k?release=a&acquire=b", b"v", 400, "Conflicting flags"),
    ("DELETE", "/v1/kv/k?recurse&cas=3", None, 400, "Conflicting flags"),
    ("PUT", "/v1/kv/k?cas=abc", b"v", 500, 'strconv.ParseUint: parsing "abc": invalid syntax'),
    ("PUT", "/v1/kv/k?flags=-1", b"v", 500, "strconv.ParseUint"),
    ("GET", "/v1/kv/k?index=abc", None, 400, "Invalid index"),
    ("GET", "/v1/kv/k?index=-5", None, 400, "Invalid index"),
    ("GET", "/v1/catalog/services?index=1&wait=forever", None, 400, "Invalid wait time"),
    ("GET", "/v1/health/service/x?passing=maybe", None, 400, "Invalid value for ?passing"),
    ("GET", "/v1/health/state/sideways", None, 400, "Bad check state"),
    ("GET", "/v1/catalog/nodes?stale&consistent", None, 400,
     "Cannot specify ?stale with ?consistent, conflicting semantics."),
    ("PUT", "/v1/session/create", b'{"Behavior": "explode"}', 400, "Invalid Behavior"),
    ("PUT", "/v1/session/create", b'{"Node": "ghost"}', 500, "ghost"),
    ("PUT", "/v1/session/create", b'{"TTL": "1s"}', 500, "Invalid Session TTL"),
    ("PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000", b"", 404, "not found"),
    ("PUT", "/v1/catalog/register", b'{"Node": 5, "Address": "10.0.0.2"}', 400, "Request decode failed"),
    ("PUT", "/v1/catalog/register", b'{"Node": "typed", "Address": "10.0.0.2", "Check": {"Name": 5}}', 400,
     "Request decode failed"),
    ("PUT", "/v1/catalog/deregister", b'{"Node": ["z"]}', 400, "Request decode failed"),
    ("PUT", "/v1/agent/check/register", b'{"Name": "h", "CheckID": 7, "TTL": "10s"}', 400, "Request decode failed"),
    ("PUT", "/v1/agent/check/register", b'{"Name": "h", "HTTP": 5, "Interval": "10s"}', 400, "Request decode failed"),
    ("PUT", "/v1/agent/check/register", b'{"Name": "h", "HTTP": "http://x", "Interval": "10s", "Header": {"a": 1}}',
     400, "Header must be a map of string lists"),
    ("PUT", "/v1/agent/service/register", b'{"Name": "x", "Check": {"CheckID": 3, "TTL": "10s"}}', 400,
     "Request decode failed"),
    ("PUT", "/v1/agent/check/update/any", b'{"Status": "passing", "Output": 5}', 400, "Request decode failed"),
    ("PUT", "/v1/session/create", b'{"ServiceChecks": ["a"]}', 400, "ServiceChecks must be a list"),
    ("PUT", "/v1/session/create", b'{"NodeChecks": "serfHealth"}', 400, "NodeChecks must be a list"),
    ("PUT", "/v1/session/create", b'{"Name": 5}', 400, "Request decode failed"),
    ("GET", "/v1/kv/k?index=18446744073709551616", None, 400, "Invalid index"),
    ("GET", "/v1/no/such/route", None, 404, ""),
    ("GET", "/v1/acl/tokens", None, 401, "ACL support disabled"),
    ("POST", "/v1/status/leader", None, 405, "method POST not allowed"),
    ("DELETE", "/v1/agent/services", None, 405, "method DELETE not allowed"),
]


def _applied_index(url: str) -> int:
    return int(requests.get(f"{url}/v1/agent/self").json()["Stats"]["raft"]["applied_index"])


@pytest.mark.parametrize(("method", "path", "body", "status", "text"), CASES,
                         ids=[f"{m} {p[:50]}" for m, p, *_ in CASES])
def test_bad_request_gets_consul_status_and_text_and_changes_nothing(
        shared_agent: AgentProcess, method: str, path: str, body: bytes | None, status: int, text: str) -> None:
    url = shared_agent.url
    before = _applied_index(url)
    # http.client sends the path as written (requests would normalise away "a/../b")
    conn = http.client.HTTPConnection("127.0.0.1", shared_agent.http_port, timeout=10)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    resp_text = resp.read().decode(errors="replace")
    conn.close()
    assert resp.status == status, resp_text
    if status == 404 and not text:
        assert resp_text == ""
    else:
        assert text in resp_text
        assert resp.getheader("Content-Type", "").startswith("text/plain")
    assert _applied_index(url) == before, "a refused request changed the store"


def test_wrong_method_lists_allowed_and_options_answers(shared_agent: AgentProcess) -> None:
    resp = requests.post(f"{shared_agent.url}/v1/kv/foo")
    assert resp.status_code == 405
    assert {"GET", "PUT", "DELETE"} <= set(resp.headers["Allow"].replace(" ", "").split(","))
    assert requests.options(f"{shared_agent.url}/v1/kv/foo").status_code == 200


def test_garbage_bytes_do_not_take_the_agent_down(shared_agent: AgentProcess) -> None:
    import socket

    for payload in (b"\x00\xff" * 100, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                    b"PUT /v1/kv/x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nabc"):
        with socket.create_connection(("127.0.0.1", shared_agent.http_port), timeout=5) as sock:
            sock.sendall(payload)
            try:
                sock.recv(1024)
            except OSError:
                pass
    assert requests.get(f"{shared_agent.url}/v1/status/leader").json() == "127.0.0.1:8300"


def test_root_answers_for_client_probes(shared_agent: AgentProcess) -> None:
    assert requests.get(shared_agent.url + "/").status_code == 200


def test_every_endpoint_caps_the_request_body(shared_agent: AgentProcess) -> None:
    """Not only KV: a huge registration body is refused with 413 before it is read, and nothing changes."""
    url = shared_agent.url
    before = _applied_index(url)
    huge = b'{"Name": "big", "Meta": {"k": "' + b"x" * (600 * 1024) + b'"}}'
    for path in ("/v1/agent/service/register", "/v1/catalog/register", "/v1/session/create"):
        resp = requests.put(url + path, data=huge, timeout=10)
        assert resp.status_code == 413, (path, resp.status_code, resp.text[:200])
        assert "too large" in resp.text
    assert _applied_index(url) == before


def test_chunked_kv_upload_is_capped_too(shared_agent: AgentProcess) -> None:
    """No Content-Length to refuse up front: the size is checked on what arrives."""
    before = _applied_index(shared_agent.url)

    def chunks():  # 512 KiB + 512 bytes: over the KV limit, under the general request cap
        for _ in range(8):
            yield b"x" * (64 * 1024)
        yield b"x" * 512

    resp = requests.put(f"{shared_agent.url}/v1/kv/chunked-big", data=chunks(), timeout=10)
    assert resp.status_code == 413 and "too large" in resp.text
    assert requests.get(f"{shared_agent.url}/v1/kv/chunked-big").status_code == 404
    assert _applied_index(shared_agent.url) == before
