"""`edgestack`: one command for the stack, in the consul CLI's shapes where Consul has the command."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edgestack.client import Client, CLIError

USAGE = """usage: edgestack <command> [args]

Commands:
  up          run the whole edge stack locally (registry, templater, HAProxy, demo app)
  agent       run the registry agent (Consul flags: -dev, -data-dir, -http-port, ...)
  template    run the templater (consul-template flags: -config, -template, -once, ...)
  kv          get | put | delete | export | import
  catalog     services | nodes
  services    register | deregister <file>
  members     list the registry's members
  reload      re-read the agent's configuration files
  demo-app    the demo HTTP service that registers itself
  scale       scale the demo service of a running `edgestack up`
"""


def _client_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"edgestack {prog}", allow_abbrev=False)
    p.add_argument("-http-addr", "--http-addr", dest="http_addr", help="registry address (CONSUL_HTTP_ADDR)")
    p.add_argument("-token", "--token", dest="token", help="ACL token (CONSUL_HTTP_TOKEN)")
    return p


def _parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Consul spells flags -flag=value; argparse needs --flag=value for multi-letter single-dash flags."""
    fixed = ["-" + a if a.startswith("-") and not a.startswith("--") and "=" in a else a for a in argv]
    return p.parse_args(fixed)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.http_addr, args.token)


# ---------------------------------------------------------------- kv


def _kv_path(key: str) -> str:
    """A key as a URL path: `?`, `#` and `%` in a key are part of the key, never a query or an escape."""
    return quote(key, safe="/")


def kv_main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("get", "put", "delete", "export", "import"):
        raise CLIError("usage: edgestack kv get|put|delete|export|import ...")
    return {"get": kv_get, "put": kv_put, "delete": kv_delete, "export": kv_export,
            "import": kv_import}[argv[0]](argv[1:])


def kv_get(argv: list[str]) -> int:
    p = _client_parser("kv get")
    p.add_argument("-recurse", "--recurse", action="store_true")
    p.add_argument("-keys", "--keys", action="store_true")
    p.add_argument("-separator", "--separator", default="/")
    p.add_argument("-detailed", "--detailed", action="store_true")
    p.add_argument("-base64", "--base64", action="store_true", help="print values base64-encoded")
    p.add_argument("key", nargs="?", default="")
    args = _parse(p, argv)
    client = _client(args)
    if args.keys:
        resp = client.call("GET", f"/v1/kv/{_kv_path(args.key)}", params={"keys": "", "separator": args.separator},
                           ok_404=True)
        for key in resp.json() if resp.status_code == 200 else []:
            print(key)
        return 0
    params = {"recurse": ""} if args.recurse else None
    resp = client.call("GET", f"/v1/kv/{_kv_path(args.key)}", params=params, ok_404=True)
    if resp.status_code == 404:
        if args.recurse:
            return 0
        raise CLIError(f"Error! No key exists at: {args.key}")
    out = sys.stdout.buffer
    for entry in resp.json():
        raw = base64.b64decode(entry["Value"]) if entry["Value"] else b""
        value = (entry["Value"] or "").encode() if args.base64 else raw  # bytes as stored: binary-safe
        if args.detailed:
            for field in ("CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session"):
                out.write(f"{field:<14}{entry.get(field, '-')}\n".encode())
            out.write(f"{'Value':<14}".encode() + value + b"\n")
        else:
            out.write((entry["Key"].encode() + b":" if args.recurse else b"") + value + b"\n")
    out.flush()
    return 0


def _read_value(raw: str | None) -> bytes:
    if raw is None:
        return b""
    if raw == "-":
        return sys.stdin.buffer.read()
    if raw.startswith("@"):
        return Path(raw[1:]).read_bytes()
    return raw.encode()


def kv_put(argv: list[str]) -> int:
    p = _client_parser("kv put")
    p.add_argument("-cas", "--cas", action="store_true")
    p.add_argument("-modify-index", "--modify-index", dest="modify_index", type=int, default=0)
    p.add_argument("-flags", "--flags", type=int, default=0)
    p.add_argument("-acquire", "--acquire", action="store_true")
    p.add_argument("-release", "--release", action="store_true")
    p.add_argument("-session", "--session", default="")
    p.add_argument("-base64", "--base64", action="store_true")
    p.add_argument("key")
    p.add_argument("value", nargs="?")
    args = _parse(p, argv)
    value = _read_value(args.value)
    if args.base64:
        value = base64.b64decode(value)
    params: dict[str, Any] = {"flags": args.flags}
    if args.cas:
        params["cas"] = args.modify_index
    if args.acquire:
        params["acquire"] = args.session
    if args.release:
        params["release"] = args.session
    ok = _client(args).call("PUT", f"/v1/kv/{_kv_path(args.key)}", params=params, data=value).json()
    if not ok:
        raise CLIError(f"Error! Did not write to {args.key}: CAS or lock failed")
    print(f"Success! Data written to: {args.key}")
    return 0


def kv_delete(argv: list[str]) -> int:
    p = _client_parser("kv delete")
    p.add_argument("-recurse", "--recurse", action="store_true")
    p.add_argument("-cas", "--cas", action="store_true")
    p.add_argument("-modify-index", "--modify-index", dest="modify_index", type=int, default=0)
    p.add_argument("key", nargs="?", default="")
    args = _parse(p, argv)
    params: dict[str, Any] = {}
    if args.recurse:
        params["recurse"] = ""
    if args.cas:
        params["cas"] = args.modify_index
    ok = _client(args).call("DELETE", f"/v1/kv/{_kv_path(args.key)}", params=params).json()
    if not ok:
        raise CLIError(f"Error! Did not delete key {args.key}: CAS failed")
    print(f"Success! Deleted key{'s with prefix' if args.recurse else ''}: {args.key}")
    return 0


def kv_export(argv: list[str]) -> int:
    p = _client_parser("kv export")
    p.add_argument("prefix", nargs="?", default="")
    args = _parse(p, argv)
    resp = _client(args).call("GET", f"/v1/kv/{_kv_path(args.prefix)}", params={"recurse": ""}, ok_404=True)
    entries = resp.json() if resp.status_code == 200 else []
    print(json.dumps([{"key": e["Key"], "flags": e["Flags"], "value": e["Value"] or ""} for e in entries],
                     indent="\t"))
    return 0


def kv_import(argv: list[str]) -> int:
    p = _client_parser("kv import")
    p.add_argument("-prefix", "--prefix", default="")
    p.add_argument("data", nargs="?", default="-")
    args = _parse(p, argv)
    try:
        entries = json.loads(_read_value(args.data))
    except ValueError as exc:
        raise CLIError(f"Error! Cannot parse the import data: {exc}") from None
    client = _client(args)
    for entry in entries:
        key = args.prefix + entry["key"]
        client.call("PUT", f"/v1/kv/{_kv_path(key)}", params={"flags": entry.get("flags", 0)},
                    data=base64.b64decode(entry.get("value") or ""))
        print(f"Imported: {key}")
    return 0


# ---------------------------------------------------------------- catalog, services, members, reload


def catalog_main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("services", "nodes"):
        raise CLIError("usage: edgestack catalog services|nodes ...")
    p = _client_parser(f"catalog {argv[0]}")
    if argv[0] == "services":
        p.add_argument("-tags", "--tags", action="store_true")
        args = _parse(p, argv[1:])
        for name, tags in _client(args).call("GET", "/v1/catalog/services").json().items():
            print(f"{name:<30}{','.join(tags)}" if args.tags else name)
        return 0
    p.add_argument("-service", "--service", default="")
    args = _parse(p, argv[1:])
    client = _client(args)
    if args.service:
        nodes = {e["Node"]: e for e in client.call("GET", f"/v1/catalog/service/{quote(args.service, safe='')}").json()}
        rows = [{"Node": n, "ID": e["ID"], "Address": e["Address"], "Datacenter": e["Datacenter"]}
                for n, e in sorted(nodes.items())]
    else:
        rows = client.call("GET", "/v1/catalog/nodes").json()
    _table(["Node", "ID", "Address", "DC"],
           [[r["Node"], (r.get("ID") or "")[:8], r["Address"], r["Datacenter"]] for r in rows])
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


def _service_definitions(path: str) -> list[dict[str, Any]]:
    from registry.config import ConfigError, load_config_file

    try:
        data = load_config_file(Path(path))
    except ConfigError as exc:
        raise CLIError(f"Error! {exc}") from None
    services = data.get("services") or data.get("service") or []
    services = services if isinstance(services, list) else [services]
    if not services:
        raise CLIError(f"Error! {path}: no service definition (expected service {{ ... }} or services [...])")
    return services


def services_main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("register", "deregister"):
        raise CLIError("usage: edgestack services register|deregister <file>")
    p = _client_parser(f"services {argv[0]}")
    p.add_argument("-id", "--id", default="")
    p.add_argument("file", nargs="?")
    args = _parse(p, argv[1:])
    client = _client(args)
    if argv[0] == "deregister" and args.id:
        client.call("PUT", f"/v1/agent/service/deregister/{quote(args.id, safe='')}")
        print(f"Deregistered service: {args.id}")
        return 0
    if not args.file:
        raise CLIError(f"usage: edgestack services {argv[0]} <file>")
    for svc in _service_definitions(args.file):
        name = svc.get("name") or svc.get("Name") or ""
        if argv[0] == "register":
            client.call("PUT", "/v1/agent/service/register", json=svc)
            print(f"Registered service: {name}")
        else:
            sid = svc.get("id") or svc.get("ID") or name
            client.call("PUT", f"/v1/agent/service/deregister/{quote(sid, safe='')}")
            print(f"Deregistered service: {name}")
    return 0


def members_main(argv: list[str]) -> int:
    args = _parse(_client_parser("members"), argv)
    members = _client(args).call("GET", "/v1/agent/members", params={"segment": "_all"}).json()
    status = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}
    _table(["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"],
           [[m["Name"], f"{m['Addr']}:{m['Port']}", status.get(m["Status"], "unknown"), "server",
             m["Tags"].get("build", "").split(":")[0], m["Tags"].get("vsn", ""), m["Tags"].get("dc", ""),
             "default", "<all>"] for m in members])
    return 0


def reload_main(argv: list[str]) -> int:
    args = _parse(_client_parser("reload"), argv)
    _client(args).call("PUT", "/v1/agent/reload")
    print("Configuration reload triggered")
    return 0


# ---------------------------------------------------------------- processes


def agent_main(argv: list[str]) -> int:
    from registry.agent import main as registry_main

    return registry_main(argv)


def template_main(argv: list[str]) -> int:
    from templater.cli import main as templater_main

    return templater_main(argv)


def _lazy(module: str, attr: str = "main"):
    def run(argv: list[str]) -> int:
        return getattr(__import__(module, fromlist=[attr]), attr)(argv)
    return run


COMMANDS = {
    "agent": agent_main, "template": template_main, "kv": kv_main, "catalog": catalog_main,
    "services": services_main, "members": members_main, "reload": reload_main,
    "up": _lazy("edgestack.up"), "demo-app": _lazy("edgestack.demo"), "scale": _lazy("edgestack.up", "scale_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"edgestack: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 1
    try:
        return command(argv[1:]) or 0
    except CLIError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
