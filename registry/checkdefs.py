"""Check definitions: from a client's JSON (or a config file) to a stored check record.

The record carries Consul's public fields plus a private `_spec` (hidden from every view) that
the check runners read: what to probe, how often, and the thresholds. Keeping the spec inside the
record means agent checks survive a restart with the catalog, as Consul's persisted checks do.

Validation follows Consul's order and words (agent/check/register: name, status, then the check
type's own rules as `Invalid check: ...`; script checks on an agent without them: 500).
"""

from __future__ import annotations

from typing import Any

from registry.body import Body, RequestError, require_strings
from registry.durations import DurationError, format_duration, parse_duration

VALID_STATUSES = ("passing", "warning", "critical")
UNSUPPORTED_TYPES = ("GRPC", "H2PING", "H2PingUseTLS", "DockerContainerID", "AliasService", "AliasNode",
                     "OSService", "UDP")
MIN_INTERVAL = 1.0
OUTPUT_MAX = 4096
DEFAULT_TIMEOUT = {"http": 10.0, "tcp": 10.0, "script": 30.0}

CHECK_STRING_FIELDS = ("CheckID", "Name", "Notes", "Status", "ServiceID", "HTTP", "TCP", "Method", "Body",
                       "Script", "TLSServerName")


def _require_header(header: object) -> None:
    """Header is a map of header name → list of values, as Consul's check definitions have it."""
    if header is None:
        return
    if not isinstance(header, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in header.values()):
        raise RequestError(400, "Request decode failed: Header must be a map of string lists")


CHECK_ALIASES = {"scriptargs": "args", "id": "checkid"}

#: Consul's texts when script checks are off: remote = HTTP API, local = config files.
SCRIPTS_DISABLED_REMOTE = ("Scripts are disabled on this agent from remote calls; to enable, configure "
                           "'enable_script_checks' to true")
SCRIPTS_DISABLED_LOCAL = ("Scripts are disabled on this agent; to enable, configure 'enable_script_checks' "
                          "or 'enable_local_script_checks' to true")
SERVICE_STATUS_ERROR = "Status for checks must 'passing', 'warning', 'critical'"
CHECK_STATUS_ERROR = "Bad check status"


def _seconds(body: Body, name: str, default: float = 0.0) -> float:
    value = body.get(name)
    if value is None or value == "":
        return default
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise RequestError(400, f"Request decode failed: {name}: {exc}") from None


def _invalid(text: str) -> RequestError:
    return RequestError(400, f"Invalid check: {text}")


def check_type(body: Body) -> str:
    """ttl / http / tcp / script, picked in Consul's order when several are set ("" for none)."""
    for name in UNSUPPORTED_TYPES:
        if body.get(name):
            raise _invalid(f"{name} checks are not supported by this registry")
    for kind, present in (("http", body.get("HTTP")), ("ttl", body.has("TTL") and body.get("TTL") != ""),
                          ("tcp", body.get("TCP")), ("script", body.get("Args") or body.get("Script"))):
        if present:
            return kind
    return ""


def parse_check(body: Body, node: str, *, service: dict | None = None, position: int = 0, count: int = 1,
                enable_script_checks: bool = False, local: bool = False) -> dict:
    """A stored check record (status defaults to critical, as in Consul).

    `local` marks a definition from a config file: Consul words the script refusal differently there.
    """
    if service is None and not body.get("Name"):
        raise RequestError(400, "Missing check name")
    status = body.get("Status") or "critical"
    if status not in VALID_STATUSES:
        raise RequestError(400, SERVICE_STATUS_ERROR if service is not None else CHECK_STATUS_ERROR)
    require_strings(body, *CHECK_STRING_FIELDS)
    _require_header(body.get("Header"))
    kind = check_type(body)
    spec = _spec(body, kind)
    if kind == "script" and not enable_script_checks:
        raise RequestError(500, SCRIPTS_DISABLED_LOCAL if local else SCRIPTS_DISABLED_REMOTE)
    check_id, name = _identity(body, service, position, count)
    service_id = service["ID"] if service else (body.get("ServiceID") or "")
    return {
        "Node": node, "CheckID": check_id, "Name": name, "Status": status, "Notes": body.get("Notes", ""),
        "Output": "", "ServiceID": service_id, "ServiceName": service["Service"] if service else "",
        "ServiceTags": list(service["Tags"]) if service else [], "Type": kind,
        "Interval": format_duration(spec["interval"]) if spec["interval"] else "",
        "Timeout": format_duration(spec["timeout"]) if kind in DEFAULT_TIMEOUT else "",
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


def _validate(kind: str, interval: float, ttl: float) -> None:
    """Consul's CheckType.Validate rules, in its order and words."""
    if interval > 0 and ttl > 0:
        raise _invalid("Interval and TTL cannot both be specified")
    if kind in ("http", "tcp", "script") and interval <= 0:
        raise _invalid("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")
    if kind in ("ttl", "") and ttl <= 0:
        raise _invalid("TTL must be > 0 for TTL checks")


def _count(body: Body, name: str, default: int = 0) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"Request decode failed: {name}: expected a number")
    return value


def _spec(body: Body, kind: str) -> dict[str, Any]:
    interval = _seconds(body, "Interval")
    ttl = _seconds(body, "TTL")
    _validate(kind, interval, ttl)
    if kind in ("http", "tcp", "script"):
        interval = max(interval, MIN_INTERVAL)
    args = body.get("Args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise RequestError(400, "Request decode failed: Args must be a list of strings")
    header = body.get("Header") or {}
    if not isinstance(header, dict):
        raise RequestError(400, "Request decode failed: Header must be a map of string lists")
    output_max = _count(body, "OutputMaxSize")
    if output_max < 0:
        raise _invalid("MaxOutputMaxSize must be positive")
    failures_critical = _count(body, "FailuresBeforeCritical")
    failures_warning = _count(body, "FailuresBeforeWarning", failures_critical) or failures_critical
    if failures_warning > failures_critical:
        raise _invalid("FailuresBeforeWarning can't be higher than FailuresBeforeCritical")
    timeout = _seconds(body, "Timeout", DEFAULT_TIMEOUT.get(kind, 10.0))
    return {
        "kind": kind, "interval": interval, "timeout": timeout, "ttl": ttl,
        "http": body.get("HTTP", ""), "method": body.get("Method") or "GET", "header": header,
        "body": body.get("Body", ""), "tls_skip_verify": bool(body.get("TLSSkipVerify", False)),
        "tcp": body.get("TCP", ""), "args": list(args), "script": body.get("Script", ""),
        "deregister_after": _seconds(body, "DeregisterCriticalServiceAfter"),
        "success_before_passing": _count(body, "SuccessBeforePassing"),
        "failures_before_warning": failures_warning,
        "failures_before_critical": failures_critical,
        "output_max_size": min(output_max or OUTPUT_MAX, OUTPUT_MAX),
    }


def _definition(body: Body, spec: dict[str, Any]) -> dict[str, Any]:
    """The HealthCheckDefinition Consul shows in catalog/health check JSON."""
    return {
        "Interval": format_duration(spec["interval"]), "Timeout": format_duration(spec["timeout"])
        if spec["kind"] in DEFAULT_TIMEOUT else "0s",
        "DeregisterCriticalServiceAfter": format_duration(spec["deregister_after"]),
        "HTTP": spec["http"], "Header": spec["header"] or None, "Method": body.get("Method", ""),
        "Body": spec["body"], "TLSServerName": "", "TLSSkipVerify": spec["tls_skip_verify"],
        "TCP": spec["tcp"], "TCPUseTLS": False, "UDP": "", "GRPC": "", "OSService": "", "GRPCUseTLS": False,
    }


def _as_list(value: Any, name: str) -> list[Any]:
    """One check or several: JSON gives an object or a list, HCL blocks always give lists."""
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    raise RequestError(400, f"Request decode failed: {name} must be an object or a list")


def service_check_bodies(service_body: Body) -> list[Body]:
    """`Check` (one) and `Checks` (a list) of a service registration, as Bodies."""
    raw = _as_list(service_body.get("Check"), "Check") + _as_list(service_body.get("Checks"), "Checks")
    bodies = []
    for item in raw:
        if not isinstance(item, dict):
            raise RequestError(400, "Request decode failed: a check must be an object")
        bodies.append(Body(item, CHECK_ALIASES))
    return [b for b in bodies if b.raw]


def parse_service_checks(service_body: Body, service: dict, node: str, enable_script_checks: bool,
                         local: bool = False) -> list[dict]:
    bodies = service_check_bodies(service_body)
    return [parse_check(b, node, service=service, position=i, count=len(bodies),
                        enable_script_checks=enable_script_checks, local=local) for i, b in enumerate(bodies)]
