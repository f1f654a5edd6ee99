"""A small HTTP client for the CLI: Consul's address and token rules (flags, CONSUL_HTTP_ADDR/TOKEN)."""

from __future__ import annotations

import os
from typing import Any

import requests

DEFAULT_ADDR = "127.0.0.1:8500"


class CLIError(Exception):
    """Something to tell the user, then exit 1."""


def base_url(addr: str | None = None) -> str:
    addr = addr or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
    return addr.rstrip("/") if addr.startswith(("http://", "https://")) else f"http://{addr}"


class Client:
    """Consul-API calls with the token in X-Consul-Token (never in URLs, so never in logs)."""

    def __init__(self, addr: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url = base_url(addr)
        self.session = requests.Session()
        token = token or os.environ.get("CONSUL_HTTP_TOKEN")
        if token:
            self.session.headers["X-Consul-Token"] = token
        self.timeout = timeout

    def call(self, method: str, path: str, *, params: Any = None, json: Any = None, data: Any = None,
             ok_404: bool = False) -> requests.Response:
        try:
            resp = self.session.request(method, self.url + path, params=params, json=json, data=data,
                                        timeout=self.timeout)
        except requests.ConnectionError:
            raise CLIError(f"cannot reach the registry at {self.url} (is `edgestack agent` running? "
                           "set -http-addr or CONSUL_HTTP_ADDR)") from None
        if resp.status_code == 404 and ok_404:
            return resp
        if resp.status_code >= 400:
            raise CLIError(f"Unexpected response code: {resp.status_code} ({resp.text.strip()})")
        return resp
