"""HTTP and TCP checks end to end: a real agent probing real backends on 127.0.0.1.

Kill a backend and `health/service?passing` drops its instance within about interval + timeout;
bring it back and the instance returns. A backend that never answers costs its own check one
timeout and leaves the other checks running on time.
"""

from __future__ import annotations

import time

import requests

from tests.procs import AgentProcess, wait_until
from tests.test_checks_support import (
    HTTPBackend,
    HungBackend,
    TCPBackend,
    check_record,
    passing_ids,
    register,
    wait_status,
)

SLACK = 8.0  # generous on a loaded 2-core machine; the measured figures are printed


def _drop_and_return(agent: AgentProcess, service: str, instance: str, stop, start,
                     while_down=lambda: None) -> tuple[float, float]:
    wait_until(lambda: instance in passing_ids(agent, service), 10, message=f"{instance} passing")
    started = time.monotonic()
    stop()
    wait_until(lambda: instance not in passing_ids(agent, service), 2.0 + SLACK,
               message=f"{instance} dropped from ?passing")
    dropped = time.monotonic() - started
    while_down()
    started = time.monotonic()
    start()
    wait_until(lambda: instance in passing_ids(agent, service), 1.0 + SLACK,
               message=f"{instance} back in ?passing")
    return dropped, time.monotonic() - started


def test_http_and_tcp_backends_drop_and_return(shared_agent: AgentProcess) -> None:
    web, tcp = HTTPBackend().start(), TCPBackend().start()
    try:
        assert register(shared_agent, {"Name": "shop", "ID": "shop-http", "Port": web.port, "Check": {
            "HTTP": web.url, "Interval": "1s", "Timeout": "1s"}}).status_code == 200
        assert register(shared_agent, {"Name": "shop", "ID": "shop-tcp", "Port": tcp.port, "Check": {
            "TCP": tcp.address, "Interval": "1s", "Timeout": "1s"}}).status_code == 200
        wait_until(lambda: passing_ids(shared_agent, "shop") == ["shop-http", "shop-tcp"], 10,
                   message="both instances passing")

        http_times = _drop_and_return(shared_agent, "shop", "shop-http", web.stop, web.start)
        assert passing_ids(shared_agent, "shop") == ["shop-http", "shop-tcp"]

        def refused() -> None:
            output = check_record(shared_agent, "service:shop-tcp")["Output"]
            assert output.startswith(f"dial tcp {tcp.address}:") and "refused" in output

        tcp_times = _drop_and_return(shared_agent, "shop", "shop-tcp", tcp.stop, tcp.start, refused)
        print(f"\nHTTP backend killed -> dropped in {http_times[0]:.2f}s, back in {http_times[1]:.2f}s "
              f"(interval 1s + timeout 1s)")
        print(f"TCP backend killed -> dropped in {tcp_times[0]:.2f}s, back in {tcp_times[1]:.2f}s")
        output = check_record(shared_agent, "service:shop-tcp")["Output"]
        assert output == f"TCP connect {tcp.address}: Success"
    finally:
        web.stop()
        tcp.stop()


def test_http_codes_method_header_and_output(shared_agent: AgentProcess) -> None:
    web = HTTPBackend().start()
    try:
        register(shared_agent, {"Name": "codes", "Port": web.port, "Check": {
            "HTTP": web.url, "Method": "POST", "Header": {"X-Probe": ["1"]}, "Body": "{}",
            "Interval": "1s", "Timeout": "2s", "Status": "passing"}})
        cid = "service:codes"
        wait_until(lambda: web.requests > 0, 10, message="first probe")
        web.code = 429
        wait_status(shared_agent, cid, "warning")
        web.code = 503
        wait_status(shared_agent, cid, "critical")
        web.code, web.body = 201, b"x" * 10000
        wait_status(shared_agent, cid, "passing")
        record = check_record(shared_agent, cid)
        assert record["Type"] == "http" and record["Interval"] == "1s" and record["Timeout"] == "2s"
        assert record["Output"].startswith(f"HTTP POST {web.url}: 201 Created Output: xxx")
        assert len(record["Output"]) <= 4096  # output capped at Consul's 4 KiB
    finally:
        web.stop()


def test_hung_backend_costs_one_timeout_and_blocks_nobody(shared_agent: AgentProcess) -> None:
    hung, web = HungBackend(), HTTPBackend().start()
    try:
        register(shared_agent, {"Name": "stuck", "Checks": [
            {"HTTP": f"http://127.0.0.1:{hung.port}/", "Interval": "1s", "Timeout": "3s",
             "Status": "passing"},
            {"TCP": f"127.0.0.1:{hung.port}", "Interval": "1s", "Timeout": "1s"}]})
        register(shared_agent, {"Name": "fine", "Check": {"HTTP": web.url, "Interval": "1s",
                                                          "Timeout": "1s"}})
        wait_status(shared_agent, "service:fine", "passing")
        wait_status(shared_agent, "service:stuck:1", "critical", timeout=3 + SLACK)
        assert "timed out after 3s" in check_record(shared_agent, "service:stuck:1")["Output"]
        # the TCP handshake completes in the kernel, so that check passes while the HTTP one hangs
        wait_status(shared_agent, "service:stuck:2", "passing")
        # while probes of the hung backend sit in their timeouts, the other check keeps its pace
        started = time.monotonic()
        web.stop()
        wait_status(shared_agent, "service:fine", "critical", timeout=2 + SLACK)
        print(f"\nwith a hung backend, a healthy check noticed its own backend's death in "
              f"{time.monotonic() - started:.2f}s")
        stats = requests.get(shared_agent.url + "/debug/checks", timeout=5).json()
        print(f"runner lag while hung: p99 {stats['lag_p99_ms']} ms over {stats['window']} runs")
    finally:
        hung.stop()
        web.stop()
