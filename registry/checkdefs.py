"""Check definitions: from a client's JSON (or a config file) to a stored check record.

The record carries Consul's public fields plus a private `_spec` (hidden from every view) that
the check runners read: what to probe, how often, and the thresholds. Keeping the spec inside the
record means agent checks survive a restart with the catalog, as Consul's persisted checks do.
"""

from __future__ import annotations

from typing import Any

from registry.durations import DurationError, format_duration, parse_duration
from registry.http.common import Body, RequestError

VALID_STATUSES = ("passing", "warning", "critical")
UNSUPPORTED_TYPES = ("GRPC", "H2PING", "H2PingUseTLS", "DockerContainerID", "AliasService", "AliasNode",
                     "OSService", "UDP")
MIN_INTERVAL = 1.0
OUTPUT_MAX = 4096

CHECK_ALIASES = {"scriptargs": "args", "id": "checkid"}


def _seconds(body: Body, name: str, default: float = 0.0) -> float:
    value = body.get(name)
    if value is None or value == "":
        return default
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise RequestError(400, f"Request decode failed: {name}: {exc}") from None


def check_type(body: Body) -> str:
    """ttl / http / tcp / script, or a 400 naming what is wrong."""
    for name in UNSUPPORTED_TYPES:
        if body.get(name):
            raise RequestError(400, f"Invalid check: {name} checks are not supported by this registry")
    kinds = [k for k, present in (("ttl", body.has("TTL")), ("http", body.has("HTTP")),
                                  ("tcp", body.has("TCP")),
                                  ("script", body.has("Args") or body.has("Script"))) if present]
    if len(kinds) > 1:
        raise RequestError(400, "Invalid check: only one of TTL, HTTP, TCP or Args/Script may be set")
    return kinds[0] if kinds else ""


def parse_check(body: Body, node: str, *, service: dict | None = None, position: int = 0, count: int = 1,
                enable_script_checks: bool = False) -> dict:
    """A stored check record (status defaults to critical, as in Consul)."""
    kind = check_type(body)
    if service is None and not kind and not body.get("Name"):
        raise RequestError(400, "Missing check name")
    if kind == "script" and not enable_script_checks:
        raise RequestError(400, "Scripts are disabled on this agent; to enable, configure "
                                "'enable_script_checks' or 'enable_local_script_checks' to true")
    status = body.get("Status") or "critical"
    if status not in VALID_STATUSES:
        raise RequestError(400, "Status for checks must 'passing', 'warning', 'critical'")
    spec = _spec(body, kind)
    check_id, name = _identity(body, service, position, count)
    service_id = service["ID"] if service else (body.get("ServiceID") or "")
    return {
        "Node": node, "CheckID": check_id, "Name": name, "Status": status, "Notes": body.get("Notes", ""),
        "Output": "", "ServiceID": service_id, "ServiceName": service["Service"] if service else "",
        "ServiceTags": list(service["Tags"]) if service else [], "Type": kind,
        "Interval": format_duration(spec["interval"]) if spec["interval"] else "",
        "Timeout": format_duration(spec["timeout"]) if kind in ("http", "tcp", "script") else "",
        "ExposedPort": 0, "Definition": _definition(body, spec), "_spec": spec,
        "_keep_status": not body.has("Status"),
    }


def _identity(body: Body, service: dict | None, position: int, count: int) -> tuple[str, str]:
    check_id = body.get("CheckID") or ""
    name = body.get("Name") or ""
    if service is not None:
        default_id = f"service:{service['ID']}" if count == 1 else f"service:{service['ID']}:{position + 1}"
        return check_id or default_id, name or f"Service '{service['Service']}' check"
    return check_id or name, name


def _spec(body: Body, kind: str) -> dict[str, Any]:
    interval = _seconds(body, "Interval")
    ttl = _seconds(body, "TTL")
    if kind == "ttl" and ttl <= 0:
        raise RequestError(400, "Invalid check: TTL must be > 0 for TTL checks")
    if kind in ("http", "tcp", "script"):
        if interval <= 0:
            raise RequestError(400, "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks")
        interval = max(interval, MIN_INTERVAL)
    args = body.get("Args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise RequestError(400, "Request decode failed: Args must be a list of strings")
    header = body.get("Header") or {}
    if not isinstance(header, dict):
        raise RequestError(400, "Request decode failed: Header must be a map of string lists")
    return {
        "kind": kind, "interval": interval, "timeout": _seconds(body, "Timeout", 10.0), "ttl": ttl,
        "http": body.get("HTTP", ""), "method": body.get("Method") or "GET", "header": header,
        "body": body.get("Body", ""), "tls_skip_verify": bool(body.get("TLSSkipVerify", False)),
        "tcp": body.get("TCP", ""), "args": list(args), "script": body.get("Script", ""),
        "deregister_after": _seconds(body, "DeregisterCriticalServiceAfter"),
        "success_before_passing": int(body.get("SuccessBeforePassing", 0) or 0),
        "failures_before_critical": int(body.get("FailuresBeforeCritical", 0) or 0),
        "output_max_size": int(body.get("OutputMaxSize", OUTPUT_MAX) or OUTPUT_MAX),
    }


def _definition(body: Body, spec: dict[str, Any]) -> dict[str, Any]:
    """The HealthCheckDefinition Consul shows in catalog/health check JSON."""
    return {
        "Interval": format_duration(spec["interval"]), "Timeout": format_duration(spec["timeout"])
        if spec["kind"] in ("http", "tcp", "script") else "0s",
        "DeregisterCriticalServiceAfter": format_duration(spec["deregister_after"]),
        "HTTP": spec["http"], "Header": spec["header"] or None, "Method": body.get("Method", ""),
        "Body": spec["body"], "TLSServerName": "", "TLSSkipVerify": spec["tls_skip_verify"],
        "TCP": spec["tcp"], "TCPUseTLS": False, "UDP": "", "GRPC": "", "OSService": "", "GRPCUseTLS": False,
    }


def service_check_bodies(service_body: Body) -> list[Body]:
    """`Check` (one) and `Checks` (a list) of a service registration, as Bodies."""
    raw: list[Any] = []
    if service_body.get("Check"):
        raw.append(service_body.get("Check"))
    checks = service_body.get("Checks") or []
    if not isinstance(checks, list):
        raise RequestError(400, "Request decode failed: Checks must be a list")
    raw.extend(checks)
    bodies = []
    for item in raw:
        if not isinstance(item, dict):
            raise RequestError(400, "Request decode failed: a check must be an object")
        bodies.append(Body(item, CHECK_ALIASES))
    return [b for b in bodies if b.raw]


def parse_service_checks(service_body: Body, service: dict, node: str, enable_script_checks: bool) -> list[dict]:
    bodies = service_check_bodies(service_body)
    return [parse_check(b, node, service=service, position=i, count=len(bodies),
                        enable_script_checks=enable_script_checks) for i, b in enumerate(bodies)]
