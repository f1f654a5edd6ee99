"""Agent configuration: Consul's flags, HCL/JSON config files, CONSUL_LOCAL_CONFIG and interface env vars.

Precedence, as in Consul: config files (in the order given; a config dir's *.hcl/*.json files in
lexical order), then CONSUL_LOCAL_CONFIG (what Consul's container image writes into its config dir),
then command-line flags.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

CLUSTER_REFUSAL = (
    "edgestack's registry is a single server: {what} asks for a cluster, and a cluster is Consul's job. "
    "Run a Consul cluster and point the templater and clients at it: "
    "`edgestack template -consul-addr <consul-agent>:8500` (or CONSUL_HTTP_ADDR=<consul-agent>:8500)."
)

#: Config keys whose HCL blocks may repeat and so stay lists.
REPEATABLE = {"service", "services", "check", "checks", "recursors", "retry_join", "start_join"}


class ConfigError(Exception):
    """A configuration problem, with the file it came from when there is one."""


@dataclass
class AgentConfig:
    """Everything the agent needs to start."""

    dev: bool = False
    data_dir: Path | None = None
    node_name: str = ""
    datacenter: str = "dc1"
    client_addr: str = "127.0.0.1"
    bind_addr: str = "127.0.0.1"
    http_port: int = 8500
    dns_port: int = 8600
    domain: str = "consul."
    recursors: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    enable_script_checks: bool = False  # scripts from config files (local) and, when remote too, the HTTP API
    enable_remote_script_checks: bool = False  # only enable_script_checks (not _local_) opens the HTTP API
    config_files: list[Path] = field(default_factory=list)
    config_dirs: list[Path] = field(default_factory=list)
    dns_config: dict[str, Any] = field(default_factory=dict)
    acl: dict[str, Any] = field(default_factory=dict)
    services: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def hcl_loads(text: str) -> dict[str, Any]:
    """HCL → plain data; python-hcl2 keeps repeated and labelled blocks intact (pyhcl does not)."""
    return hcl2.loads(text, serialization_options=hcl2.SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False))


def _collapse_blocks(data: Any, key: str = "") -> Any:
    """HCL blocks parse as lists of objects; a non-repeatable block becomes one object."""
    if isinstance(data, dict):
        return {k: _collapse_blocks(v, k) for k, v in data.items()}
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data) \
            and key not in REPEATABLE:
        merged: dict[str, Any] = {}
        for item in data:
            merged.update(_collapse_blocks(item, key))
        return merged
    if isinstance(data, list):
        return [_collapse_blocks(item, key) for item in data]
    return data


def load_config_file(path: Path) -> dict[str, Any]:
    """One HCL or JSON file; errors name the file (and the parser's line when it gives one)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = hcl_loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - the HCL parser raises several kinds
        raise ConfigError(f"{path}: invalid HCL: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be an object")
    return _collapse_blocks(data)


def config_dir_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"{directory}: config dir does not exist")
    return sorted(p for p in directory.iterdir() if p.suffix in (".hcl", ".json") and p.is_file())


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Later sources win key by key; service definitions accumulate."""
    result = dict(base)
    for key, value in extra.items():
        if key in ("service", "services"):
            items = value if isinstance(value, list) else [value]
            result["services"] = list(result.get("services", [])) + items
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface (CONSUL_BIND_INTERFACE / CONSUL_CLIENT_INTERFACE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
        except OSError:
            raise ConfigError(f"interface {name!r} has no IPv4 address (or does not exist)") from None
    return socket.inet_ntoa(packed[20:24])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgestack agent", description="Run the registry agent.",
                                allow_abbrev=False)

    def opt(name: str, **kwargs: Any) -> None:
        p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kwargs)

    opt("dev", action="store_true", help="in-memory store, nothing persisted")
    opt("data-dir", help="directory for the SQLite store")
    opt("http-port", type=int)
    opt("dns-port", type=int)
    opt("client", help="address the HTTP and DNS listeners bind (default 127.0.0.1)")
    opt("bind", help="address advertised for this node (default 127.0.0.1)")
    opt("advertise", help="same as -bind for this single server")
    opt("node", help="node name (default: hostname)")
    opt("node-id", help="node ID (UUID)")
    opt("datacenter")
    opt("domain", help="DNS domain (default consul.)")
    opt("recursor", action="append", default=None, help="forward names outside the domain here")
    opt("config-file", action="append", default=[])
    opt("config-dir", action="append", default=[])
    opt("hcl", action="append", default=[], help="an HCL config fragment (repeatable), e.g. 'acl { enabled = true }'")
    opt("log-level")
    opt("enable-script-checks", action="store_true", default=None)
    opt("server", action="store_true", help="accepted: this registry is always a server")
    opt("ui", action="store_true", help="accepted and ignored")
    opt("bootstrap", action="store_true", help="accepted: a single server bootstraps itself")
    opt("bootstrap-expect", type=int)
    opt("join", action="append", default=[])
    opt("retry-join", action="append", default=[])
    return p


def _refuse_cluster(bootstrap_expect: int | None, join: list[str], retry_join: list[str]) -> None:
    if bootstrap_expect is not None and bootstrap_expect > 1:
        raise ConfigError(CLUSTER_REFUSAL.format(what=f"-bootstrap-expect={bootstrap_expect}"))
    if join:
        raise ConfigError(CLUSTER_REFUSAL.format(what="-join"))
    if retry_join:
        raise ConfigError(CLUSTER_REFUSAL.format(what="-retry-join"))


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> AgentConfig:
    """Flags + files + environment → AgentConfig, or ConfigError with a message for people."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(_split_equals(argv))
    files = [Path(f) for f in args.config_file]
    dirs = [Path(d) for d in args.config_dir]
    merged: dict[str, Any] = {}
    for path in files + [f for d in dirs for f in config_dir_files(d)]:
        merged = merge(merged, load_config_file(path))
    for fragment in args.hcl:
        try:
            merged = merge(merged, _collapse_blocks(hcl_loads(fragment)))
        except Exception as exc:  # noqa: BLE001 - the HCL parser raises several kinds
            raise ConfigError(f"-hcl: invalid HCL: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if env.get("CONSUL_LOCAL_CONFIG"):
        try:
            merged = merge(merged, json.loads(env["CONSUL_LOCAL_CONFIG"]))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CONSUL_LOCAL_CONFIG: invalid JSON: {exc.msg}") from None
    config = from_mapping(merged)
    config.config_files, config.config_dirs = files, dirs
    _apply_env_interfaces(config, env)
    _apply_flags(config, args)
    _refuse_cluster(args.bootstrap_expect if args.bootstrap_expect is not None
                    else merged.get("bootstrap_expect"),
                    args.join or merged.get("start_join", []), args.retry_join or merged.get("retry_join", []))
    if not config.dev and config.data_dir is None:
        raise ConfigError("-data-dir is required unless -dev is given (edgestack up uses ./.edgestack/)")
    if not config.node_name:
        config.node_name = socket.gethostname().split(".")[0] or "node"
    if not config.domain.endswith("."):
        config.domain += "."
    return config


def _split_equals(argv: list[str]) -> list[str]:
    """Consul accepts -flag=value; argparse wants --flag=value for long single-dash names."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and "=" in arg:
            out.append("-" + arg)
        else:
            out.append(arg)
    return out


def from_mapping(data: dict[str, Any]) -> AgentConfig:
    ports = data.get("ports") or {}
    config = AgentConfig(raw=data)
    config.data_dir = Path(data["data_dir"]) if data.get("data_dir") else None
    config.node_name = data.get("node_name", "")
    config.datacenter = data.get("datacenter", "dc1")
    config.client_addr = data.get("client_addr", config.client_addr)
    config.bind_addr = data.get("bind_addr") or data.get("advertise_addr") or config.bind_addr
    config.http_port = int(ports.get("http", config.http_port))
    config.dns_port = int(ports.get("dns", config.dns_port))
    config.domain = data.get("domain", config.domain)
    config.recursors = list(data.get("recursors", []))
    config.log_level = str(data.get("log_level", config.log_level)).upper()
    config.enable_remote_script_checks = bool(data.get("enable_script_checks", False))
    config.enable_script_checks = bool(config.enable_remote_script_checks
                                       or data.get("enable_local_script_checks", False))
    config.dns_config = dict(data.get("dns_config") or {})
    config.acl = dict(data.get("acl") or {})
    config.services = list(data.get("services", []))
    return config


def _apply_env_interfaces(config: AgentConfig, env: Any) -> None:
    if env.get("CONSUL_BIND_INTERFACE"):
        config.bind_addr = interface_address(env["CONSUL_BIND_INTERFACE"])
    if env.get("CONSUL_CLIENT_INTERFACE"):
        config.client_addr = interface_address(env["CONSUL_CLIENT_INTERFACE"])


def _apply_flags(config: AgentConfig, args: argparse.Namespace) -> None:
    config.dev = args.dev
    if args.data_dir:
        config.data_dir = Path(args.data_dir)
    if args.dev:
        config.data_dir = None
    for attr, value in (("http_port", args.http_port), ("dns_port", args.dns_port),
                        ("client_addr", args.client), ("node_name", args.node),
                        ("datacenter", args.datacenter), ("domain", args.domain)):
        if value is not None:
            setattr(config, attr, value)
    if args.bind or args.advertise:
        config.bind_addr = args.advertise or args.bind
    if args.recursor:
        config.recursors = list(args.recursor)
    if args.log_level:
        config.log_level = args.log_level.upper()
    if args.enable_script_checks:
        config.enable_script_checks = config.enable_remote_script_checks = True
    config.raw["node_id"] = args.node_id or config.raw.get("node_id")
    for addr in (config.client_addr, config.bind_addr):
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(f"{addr!r} is not an IP address") from None
