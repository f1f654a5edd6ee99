"""Unit tests: parsing a rendered haproxy.cfg and diffing two of them (runtime-only vs structural)."""

from __future__ import annotations

from templater.haproxy.controller import reconcile_changes
from templater.haproxy.model import diff_models, parse_config, runtime_paths, split_address, strip_comment
from templater.haproxy.runtime import ServerState, filter_state_file, parse_servers_state

BASE = """\
# generated at 12:00
global
    stats socket /run/hx/admin.sock mode 600 level admin
    server-state-file /run/hx/state

defaults
    mode http
    timeout connect 5s

frontend http
    bind 127.0.0.1:8080
    use_backend web if { path_beg /web }   # route
    default_backend edge.unrouted

backend web
    balance roundrobin
    server n1-web1 127.0.0.1:9001 weight 1
    server n2-web2 127.0.0.1:9002 weight 2

backend edge.unrouted
    http-request return status 404
"""


def model(text: str = BASE):
    return parse_config(text)


def test_parse_servers_and_structure():
    parsed = model()
    web = parsed.backends["web"]
    assert list(web.servers) == ["n1-web1", "n2-web2"]
    assert web.servers["n2-web2"].port == 9002 and web.servers["n2-web2"].weight == 2
    assert web.dynamic
    assert not any(line.startswith("server ") for line in parsed.structure)
    assert "use_backend web if { path_beg /web }" in parsed.structure   # comment stripped


def test_comments_and_blank_lines_are_not_changes():
    other = BASE.replace("# generated at 12:00", "# generated at 12:01").replace("\n\n", "\n\n\n")
    assert diff_models(model(), model(other)).empty


def test_server_order_is_not_a_change():
    lines = BASE.splitlines()
    i = lines.index("    server n1-web1 127.0.0.1:9001 weight 1")
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    assert diff_models(model(), model("\n".join(lines))).empty


def test_added_removed_and_changed_servers_are_runtime_only():
    new = (BASE.replace("    server n1-web1 127.0.0.1:9001 weight 1\n", "")
           .replace("127.0.0.1:9002 weight 2", "127.0.0.1:9012 weight 5 disabled")
           + "")
    new = new.replace("    server n2-web2", "    server n3-web3 10.0.0.3:80 weight 1\n    server n2-web2")
    diff = diff_models(model(), model(new))
    assert diff.runtime_only, diff.structural
    kinds = sorted((c.kind, c.server.name) for c in diff.changes)
    assert kinds == [("add", "n3-web3"), ("remove", "n1-web1"), ("set_addr", "n2-web2"),
                     ("set_state", "n2-web2"), ("set_weight", "n2-web2")]
    assert diff.touched() == {("web", "n1-web1"), ("web", "n2-web2"), ("web", "n3-web3")}


def test_new_backend_or_keyword_is_structural():
    new_backend = BASE + "backend api\n    server n1-api 127.0.0.1:9100\n"
    diff = diff_models(model(), model(new_backend))
    assert diff.structural and not diff.runtime_only
    assert [c.kind for c in diff.changes] == ["add"]     # still listed, for the state file
    keyword = BASE.replace("timeout connect 5s", "timeout connect 6s")
    assert "timeout connect 6s" in diff_models(model(), model(keyword)).structural[0]


def test_server_option_change_is_structural():
    new = BASE.replace("127.0.0.1:9001 weight 1", "127.0.0.1:9001 weight 1 check inter 1s")
    diff = diff_models(model(), model(new))
    assert diff.structural and "options changed" in diff.structural[0]


def test_static_lb_backend_cannot_take_runtime_membership_changes():
    static = BASE.replace("balance roundrobin", "balance static-rr")
    assert not model(static).backends["web"].dynamic
    grown = static.replace("    server n2-web2", "    server n3 127.0.0.1:9003\n    server n2-web2")
    assert diff_models(model(static), model(grown)).structural
    hashed = BASE.replace("balance roundrobin", "balance source")
    assert not model(hashed).backends["web"].dynamic
    assert model(hashed.replace("balance source", "balance source\n    hash-type consistent")).backends[
        "web"].dynamic


def test_defaults_balance_is_inherited():
    text = BASE.replace("    timeout connect 5s", "    timeout connect 5s\n    balance static-rr").replace(
        "    balance roundrobin\n", "")
    assert not model(text).backends["web"].dynamic


def test_server_template_backend_is_marked_templated():
    text = BASE + "backend dns\n    server-template web 10 _web._tcp.service.consul resolvers r\n"
    assert model(text).backends["dns"].templated and not model(text).backends["dns"].servers


def test_addresses_and_comments():
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address("10.0.0.1:8080") == ("10.0.0.1", 8080)
    assert split_address("backend.local") == ("backend.local", None)
    assert strip_comment('http-request return string "a # b"  # c') == 'http-request return string "a # b"'


def test_runtime_paths_from_global():
    assert runtime_paths(BASE, "/etc") == ("/run/hx/admin.sock", "/run/hx/state")
    relative = "global\n stats socket unix@admin.sock level admin\n server-state-file state\n"
    assert runtime_paths(relative, "/srv/edge") == ("/srv/edge/admin.sock", "/srv/edge/state")
    assert runtime_paths("global\n stats socket 127.0.0.1:9999\n", "/x") == (None, None)


STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 web 1 n1-web1 127.0.0.1 2 0 1 1 3 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0
4 web 2 n2-web2 127.0.0.1 2 1 2 2 0 1 0 2 6 0 0 0 - 9002 - 0 0 - - 0
"""  # noqa: E501 - HAProxy's header line


def test_servers_state_parse_and_filter():
    rows = parse_servers_state(STATE)
    assert [(r.name, r.port, r.weight) for r in rows] == [("n1-web1", 9001, 1), ("n2-web2", 9002, 2)]
    assert rows[0].serving and rows[1].in_maintenance and not rows[1].serving
    filtered = filter_state_file(STATE, {("web", "n2-web2")})
    assert "n1-web1" in filtered and "n2-web2" not in filtered and filtered.startswith("1\n# be_id")


def test_reconcile_changes_from_live_state():
    live = [ServerState("web", "n1-web1", "127.0.0.1", 9001, 2, 0, 1, 1),
            ServerState("web", "old", "127.0.0.1", 9009, 2, 0, 1, 1),
            ServerState("web", "n2-web2", "127.0.0.1", 9000, 2, 0, 2, 2)]
    changes = reconcile_changes(model(), live)
    assert sorted((c.kind, c.server.name) for c in changes) == [("remove", "old"), ("set_addr", "n2-web2")]
    exact = [ServerState("web", "n1-web1", "127.0.0.1", 9001, 2, 0, 1, 1),
             ServerState("web", "n2-web2", "127.0.0.1", 9002, 2, 0, 2, 2)]
    assert reconcile_changes(model(), exact) == []


MERGE_GOOD = """global
  daemon

backend web
  balance roundrobin
  http-response set-header X ok

  server a 10.0.0.1:80 weight 1
  server b 10.0.0.2:80

backend empty
  balance roundrobin

backend gone
  server z 10.9.9.9:1
"""


def test_merge_servers_keeps_the_good_structure_and_takes_the_new_servers():
    from templater.haproxy.model import merge_servers

    assert merge_servers(MERGE_GOOD, MERGE_GOOD) == MERGE_GOOD  # nothing new: byte for byte
    edits = [("  daemon\n", "  daemon\n  bogus_directive on\n"),
             ("  server a 10.0.0.1:80 weight 1\n", ""),
             ("  server b 10.0.0.2:80\n", "  server b 10.0.0.2:80\n  server c 10.0.0.3:80\n"),
             ("backend empty\n  balance roundrobin\n", "backend empty\n  balance roundrobin\n  server e 10.0.1.1:80\n")]
    new = MERGE_GOOD
    for old, replacement in edits:
        new = new.replace(old, replacement)
    new += "\nbackend brand-new\n  server n 10.0.2.1:80\n"
    merged = merge_servers(MERGE_GOOD, new)
    good_model, merged_model = parse_config(MERGE_GOOD), parse_config(merged)
    assert merged_model.structure == good_model.structure  # the refused structure stays out
    assert "bogus_directive" not in merged and "brand-new" not in merged
    assert {name: list(be.servers) for name, be in merged_model.backends.items()} == \
        {"web": ["b", "c"], "empty": ["e"], "gone": ["z"]}
