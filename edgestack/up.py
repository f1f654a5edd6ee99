"""`edgestack up` and `edgestack scale`: the whole edge stack as local processes, and its demo service.

`up` starts the registry (durable under `<dir>/registry`, or in memory with -dev), the templater
rendering the bundled HAProxy template and supervising HAProxy 2.8 from the wheel, and a demo
service whose instances register themselves. It shows one status line per part as it comes up
(children log to `<dir>/logs/`), prints where everything is, then waits: `edgestack scale` asks it
(through the control socket, see edgestack/control.py) to start or stop demo instances, and
Ctrl-C/SIGTERM stops every process it started, in the order that keeps the catalog clean.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import queue
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from edgestack import control
from edgestack.stack import (
    Child,
    PortClaim,
    StackError,
    check_ports,
    cmdline,
    haproxy_master,
    haproxy_pids,
    process_alive,
    stop_children,
    sweep_haproxy,
)

DEMO_SERVICE = "web"
DEMO_INSTANCES = 3
MAX_INSTANCES = 50
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MODE_TEMPLATES = {"runtime": "haproxy.cfg.j2", "reload": "haproxy.cfg.j2", "dns": "haproxy-dns.cfg.j2"}
REGISTRY_TIMEOUT = 30.0
HAPROXY_TIMEOUT = 45.0
INSTANCE_TIMEOUT = 30.0
FOLLOW_TIMEOUT = 30.0
REGISTRY_STOP_GRACE = 5.0
HAPROXY_FAILED = "could not start HAProxy control"  # the templater's log line when HAProxy cannot start
HAPROXY_SOCKET_MAX = 97  # HAProxy refuses longer `-S` master socket paths


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while `up` was waiting for something: stop everything."""


@dataclass(frozen=True)
class Layout:
    """Where a stack keeps its state, all under one directory (default ./.edgestack)."""

    root: Path

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def haproxy_dir(self) -> Path:
        return self.root / "haproxy"

    @property
    def haproxy_cfg(self) -> Path:
        return self.haproxy_dir / "haproxy.cfg"

    @property
    def templater_hcl(self) -> Path:
        return self.root / "templater.hcl"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# --------------------------------------------------------------------------- flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgestack up", allow_abbrev=False,
                                description="Run the edge stack on this machine: registry, templater, "
                                            "HAProxy 2.8 and a demo service. Ctrl-C stops it all.")
    p.add_argument("-data-dir", "--data-dir", dest="data_dir", default=".edgestack",
                   help="where the stack keeps registry data, logs and HAProxy files (default ./.edgestack)")
    p.add_argument("-dev", "--dev", action="store_true",
                   help="keep the registry in memory (nothing persisted)")
    p.add_argument("-http-port", "--http-port", dest="http_port", type=int, default=8500,
                   help="registry HTTP API (default 8500)")
    p.add_argument("-dns-port", "--dns-port", dest="dns_port", type=int, default=8600,
                   help="registry DNS, UDP and TCP (default 8600)")
    p.add_argument("-front-port", "--front-port", dest="front_port", type=int, default=8080,
                   help="HAProxy HTTP front (default 8080)")
    p.add_argument("-stats-port", "--stats-port", dest="stats_port", type=int, default=8404,
                   help="HAProxy stats page and Prometheus /metrics (default 8404)")
    p.add_argument("-metrics-port", "--metrics-port", dest="metrics_port", type=int, default=8405,
                   help="templater Prometheus metrics (default 8405, 0 = off)")
    p.add_argument("-node", "--node", default="edge", help="the registry's node name (default edge)")
    p.add_argument("-mode", "--mode", choices=sorted(MODE_TEMPLATES), default="runtime",
                   help="how HAProxy follows the catalog (default runtime)")
    p.add_argument("-template", "--template", default="",
                   help="HAProxy template to render (default: the bundled one for -mode)")
    p.add_argument("-instances", "--instances", type=int, default=DEMO_INSTANCES,
                   help=f"demo instances to start (default {DEMO_INSTANCES})")
    p.add_argument("-no-demo", "--no-demo", dest="no_demo", action="store_true",
                   help="run only the stack, no demo service")
    return p


def port_claims(args: argparse.Namespace) -> list[PortClaim]:
    claims = [PortClaim(args.http_port, "registry HTTP", "-http-port"),
              PortClaim(args.dns_port, "registry DNS", "-dns-port", udp=True),
              PortClaim(args.front_port, "HAProxy front", "-front-port"),
              PortClaim(args.stats_port, "HAProxy stats", "-stats-port"),
              PortClaim(args.metrics_port, "templater metrics", "-metrics-port")]
    for claim in claims:
        if not 0 <= claim.port <= 65535:
            raise StackError(f"{claim.flag} {claim.port}: not a port number")
    for claim in claims[:3]:
        if claim.port == 0:
            raise StackError(f"{claim.flag} needs a real port "
                             "(0 is only allowed for -stats-port and -metrics-port)")
    return claims


def templater_config(args: argparse.Namespace, layout: Layout, source: Path) -> str:
    """The templater's HCL: the HAProxy template into <dir>/haproxy/haproxy.cfg, HAProxy supervised."""
    settings = {"mode": args.mode, "bind": "127.0.0.1", "http_port": args.front_port,
                "stats_port": args.stats_port}
    if args.mode == "dns":
        settings["dns_addr"] = f"127.0.0.1:{args.dns_port}"
    master = master_socket(layout)
    if master is not None:
        settings["master_socket"] = str(master)
    body = "\n".join(f"  {k:<10} = {_hcl_value(v)}" for k, v in settings.items())
    return (f"consul {{\n  address = {_hcl_value(f'127.0.0.1:{args.http_port}')}\n}}\n\n"
            f"template {{\n  source      = {_hcl_value(str(source))}\n"
            f"  destination = {_hcl_value(str(layout.haproxy_cfg))}\n}}\n\n"
            f"haproxy {{\n{body}\n}}\n")


def master_socket(layout: Layout) -> Path | None:
    """None (the templater's default, beside the config) unless that path is too long for HAProxy's
    master CLI (97 bytes): then a short one in the temp directory, unique per stack directory."""
    if len(str(layout.haproxy_dir / "haproxy-master.sock")) <= HAPROXY_SOCKET_MAX:
        return None
    digest = hashlib.sha1(str(layout.root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"edgestack-{digest}-master.sock"


def _hcl_value(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def template_source(args: argparse.Namespace) -> Path:
    source = Path(args.template).resolve() if args.template else TEMPLATES / MODE_TEMPLATES[args.mode]
    if not source.is_file():
        raise StackError(f"template {source} does not exist" + ("" if args.template else
                         " (the bundled templates are missing from this installation)"))
    return source


# --------------------------------------------------------------------------- the stack


@dataclass
class Instance:
    """One demo instance: a `demo-app` child registered as <service>-<number>."""

    service: str
    number: int
    child: Child
    port: int | None = None

    @property
    def id(self) -> str:
        return f"{self.service}-{self.number}"

    def as_state(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.child.pid, "port": self.port, "log": str(self.child.log_path)}


class Stack:
    """Starts the parts in order, serves `scale` requests, stops everything on a signal."""

    def __init__(self, args: argparse.Namespace, layout: Layout):
        self.args = args
        self.layout = layout
        self.http_addr = f"127.0.0.1:{args.http_port}"
        self.registry: Child | None = None
        self.templater: Child | None = None
        self.instances: dict[str, list[Instance]] = {}
        self.requests: queue.Queue[tuple[dict[str, Any], queue.Queue[dict[str, Any]]]] = queue.Queue()
        self.server: control.ControlServer | None = None
        self.signalled: int | None = None
        self.stopping = False
        self.http = requests.Session()

    # ----------------------------------------------------------------- top level

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        code = 0
        try:
            self.prepare()
            self.start()
            self.print_summary()
            self.serve()
        except Interrupted:
            pass
        except StackError as exc:
            print(f"\nedgestack up: {exc}", file=sys.stderr, flush=True)
            code = 1
        finally:
            self.shutdown()
        return code

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """Only records the signal: the main loop notices within a fraction of a second."""
        self.signalled = signum

    def prepare(self) -> None:
        """Refuse to run twice on one directory, clean up after a crashed run, check every port."""
        claims = port_claims(self.args)
        source = template_source(self.args)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._check_previous_run()
        check_ports(claims)
        for path in (self.layout.logs, self.layout.haproxy_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.layout.templater_hcl.write_text(templater_config(self.args, self.layout, source))
        print(f"edgestack up: state in {self._shown(self.layout.root)}, logs in "
              f"{self._shown(self.layout.logs)}/", flush=True)

    def _check_previous_run(self) -> None:
        old = control.read_state(self.layout.root)
        if not old:
            return
        pid = int(old.get("pid") or 0)
        if pid and pid != os.getpid() and process_alive(pid) and "edgestack" in " ".join(cmdline(pid)):
            raise StackError(f"an `edgestack up` is already running on {self._shown(self.layout.root)} "
                             f"(pid {pid}); stop it first (Ctrl-C in its terminal), "
                             "or give this one another -data-dir")
        leftovers = [p for p in _recorded_pids(old) if process_alive(p) and _ours(p)]
        for leftover in leftovers:
            try:
                os.kill(leftover, signal.SIGTERM)
            except ProcessLookupError:
                pass
        swept = sweep_haproxy(self.layout.haproxy_cfg)
        if leftovers or swept:
            print(f"edgestack up: stopped {len(leftovers) + len(swept)} process(es) left by an earlier run",
                  flush=True)
        control.remove_state(self.layout.root)

    def start(self) -> None:
        self.start_registry()
        self.start_templater()
        self.server = control.ControlServer(control.socket_path(self.layout.root), self._from_control).start()
        self.write_state()
        if not self.args.no_demo and self.args.instances > 0:
            self.scale(DEMO_SERVICE, self.args.instances)

    # ----------------------------------------------------------------- parts

    def start_registry(self) -> None:
        store = ["-dev"] if self.args.dev else ["-data-dir", str(self.layout.registry)]
        argv = [sys.executable, "-m", "registry", *store, "-http-port", str(self.args.http_port),
                "-dns-port", str(self.args.dns_port), "-node", self.args.node]
        self.registry = Child("registry", argv, self.layout.log("registry"), env=self._env()).start()
        self.wait_for("the registry", self._registry_ready, self.registry, REGISTRY_TIMEOUT)
        store_text = "in memory (-dev)" if self.args.dev else f"data in {self._shown(self.layout.registry)}"
        self.status("registry", "ready", f"http {self.http_addr}, dns 127.0.0.1:{self.args.dns_port}, "
                    f"{store_text}", self.registry)

    def _registry_ready(self) -> bool:
        return self.http.get(f"http://{self.http_addr}/v1/status/leader", timeout=2).json() != ""

    def start_templater(self) -> None:
        argv = [sys.executable, "-m", "templater", "-config", str(self.layout.templater_hcl)]
        if self.args.metrics_port:
            argv += ["-metrics-addr", f"127.0.0.1:{self.args.metrics_port}"]
        env = self._env(CONSUL_HTTP_ADDR=self.http_addr, EDGESTACK_HTTP_PORT=str(self.args.front_port),
                        EDGESTACK_STATS_PORT=str(self.args.stats_port),
                        EDGESTACK_DNS_ADDR=f"127.0.0.1:{self.args.dns_port}")
        self.templater = Child("templater", argv, self.layout.log("templater"), env=env).start()
        self.wait_for("HAProxy", self._haproxy_ready, self.templater, HAPROXY_TIMEOUT)
        metrics = f", metrics 127.0.0.1:{self.args.metrics_port}" if self.args.metrics_port else ""
        self.status("templater", "ready", f"{self.args.mode} mode, renders "
                    f"{self._shown(self.layout.haproxy_cfg)}{metrics}", self.templater)
        stats = f", stats 127.0.0.1:{self.args.stats_port}" if self.args.stats_port else ""
        self.status("haproxy", "ready", f"front 127.0.0.1:{self.args.front_port}{stats}",
                    pid=haproxy_master(self.layout.haproxy_cfg))

    def _haproxy_ready(self) -> bool:
        if not haproxy_pids(self.layout.haproxy_cfg):
            assert self.templater is not None
            if HAPROXY_FAILED in self.templater.log_text():  # the templater lives on; no use waiting
                log = self._shown(self.templater.log_path)
                raise StackError(f"HAProxy did not start; last lines of {log}:\n{self.templater.log_tail()}")
            return False
        if self.args.stats_port:
            return self.http.get(f"http://127.0.0.1:{self.args.stats_port}/stats", timeout=2).ok
        return self.http.get(f"http://127.0.0.1:{self.args.front_port}/", timeout=2).status_code > 0

    # ----------------------------------------------------------------- demo instances

    def scale(self, service: str, count: int) -> dict[str, Any]:
        """Start or stop demo instances of `service` until `count` run, then wait for HAProxy to follow."""
        if not SERVICE_NAME.match(service):
            raise StackError(f"{service!r} is not a usable service name (letters, digits and dashes)")
        if not 0 <= count <= MAX_INSTANCES:
            raise StackError(f"instance count must be between 0 and {MAX_INSTANCES}, got {count}")
        current = self.instances.setdefault(service, [])
        started = self._start_instances(service, count - len(current)) if count > len(current) else []
        stopped = self._stop_instances(service, len(current) - count) if count < len(current) else []
        self.write_state()
        followed, follow = self.follow(service, count)
        return {"ok": True, "service": service, "instances": [i.as_state() for i in self.instances[service]],
                "started": [i.id for i in started], "stopped": stopped, "haproxy": follow, "followed": followed}

    def _start_instances(self, service: str, how_many: int) -> list[Instance]:
        current = self.instances[service]
        taken = {i.number for i in current}
        numbers = [n for n in range(1, MAX_INSTANCES + how_many + 1) if n not in taken][:how_many]
        new = [Instance(service, n, self._demo_child(service, n).start()) for n in numbers]
        current.extend(new)
        current.sort(key=lambda i: i.number)
        for instance in new:
            instance.port = self.wait_for(f"{instance.id} to register and pass its check",
                                          lambda i=instance: self._instance_port(i), instance.child,
                                          INSTANCE_TIMEOUT)
            self.status(instance.id, "passing", f"127.0.0.1:{instance.port}, registered as {service}",
                        instance.child)
        return new

    def _demo_child(self, service: str, number: int) -> Child:
        path = "/" if service == DEMO_SERVICE else f"/{service}"
        argv = [sys.executable, "-m", "edgestack", "demo-app", "-name", service, "-id", f"{service}-{number}",
                "-port", "0", "-http-addr", self.http_addr, "-meta", f"edge-path={path}"]
        return Child(f"{service}-{number}", argv, self.layout.log(f"{service}-{number}"), env=self._env())

    def _instance_port(self, instance: Instance) -> int | None:
        entries = self.http.get(f"http://{self.http_addr}/v1/health/service/{instance.service}",
                                params={"passing": ""}, timeout=2).json()
        for entry in entries:
            if entry["Service"]["ID"] == instance.id:
                return int(entry["Service"]["Port"])
        return None

    def _stop_instances(self, service: str, how_many: int) -> list[str]:
        """The highest-numbered first, so `scale web 3` after `scale web 5` leaves web-1..web-3."""
        current = self.instances[service]
        going = current[-how_many:]
        stop_children([i.child for i in going], timeout=10.0)
        del current[-how_many:]
        for instance in going:
            self.status(instance.id, "stopped", "deregistered", instance.child)
        return [i.id for i in going]

    def follow(self, service: str, count: int) -> tuple[bool, str]:
        """Wait until HAProxy's backend for `service` serves `count` servers (read from the stats CSV);
        (whether it did, what to tell the user)."""
        if not self.args.stats_port:
            return True, "HAProxy stats are off (-stats-port 0): not verified"
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        serving = -1
        while time.monotonic() < deadline:
            self._interruptible()
            try:
                serving = len(self.serving_servers(service))
            except (requests.RequestException, ValueError, KeyError):
                serving = -1
            if serving == count:
                message = f"HAProxy backend {service} serves {count} server{'s' if count != 1 else ''}"
                self.status("haproxy", "follows", message)
                return True, message
            time.sleep(0.1)
        message = (f"HAProxy has not caught up yet ({max(serving, 0)} of {count} servers in backend "
                   f"{service}); see {self._shown(self.layout.log('templater'))}")
        self.status("haproxy", "behind", message)
        return False, message

    def serving_servers(self, service: str) -> list[str]:
        return serving_servers(self.http, self.args.stats_port, backend_name(service))

    # ----------------------------------------------------------------- the running stack

    def serve(self) -> None:
        """Until a signal: answer `scale` requests, notice parts that exit."""
        while self.signalled is None:
            try:
                message, reply = self.requests.get(timeout=0.25)
            except queue.Empty:
                self.check_children()
                continue
            reply.put(self._handle(message))
            self.check_children()

    def _from_control(self, message: dict[str, Any]) -> dict[str, Any]:
        """Runs on the control thread: hand the request to the main thread (the parent of every child)."""
        if self.stopping:
            return {"ok": False, "error": "the stack is stopping"}
        reply: queue.Queue[dict[str, Any]] = queue.Queue()
        self.requests.put((message, reply))
        try:
            return reply.get(timeout=300)
        except queue.Empty:
            return {"ok": False, "error": "the running `edgestack up` did not answer in time"}

    def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        try:
            if op == "scale":
                return self.scale(str(message.get("service", "")), int(message.get("count", -1)))
            if op == "status":
                return {"ok": True, "state": self.state()}
            return {"ok": False, "error": f"unknown request {op!r}"}
        except StackError as exc:
            return {"ok": False, "error": str(exc)}
        except (TypeError, ValueError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        except Interrupted:
            return {"ok": False, "error": "the stack is stopping"}

    def check_children(self) -> None:
        for part in (self.registry, self.templater):
            if part is not None and not part.running():
                raise StackError(f"{part.name} exited unexpectedly (code {part.proc.returncode}); "
                                 f"last lines of {self._shown(part.log_path)}:\n{part.log_tail()}")
        for instances in self.instances.values():
            for instance in [i for i in instances if not i.child.running()]:
                instances.remove(instance)
                self.status(instance.id, "exited", f"code {instance.child.proc.returncode}; see "
                            f"{self._shown(instance.child.log_path)}")
                self.write_state()

    def shutdown(self) -> None:
        """Demo instances first (they deregister), the templater (it stops HAProxy), the registry last."""
        self.stopping = True
        started = [c for c in self._children() if c.proc is not None]
        if started:
            print("\nedgestack up: stopping…", flush=True)
        if self.server is not None:
            self.server.close()
        self._refuse_queued()
        stop_children([i.child for group in self.instances.values() for i in group], timeout=10.0)
        if self.templater is not None:  # only then is the HAProxy of this directory ours to stop
            stop_children([self.templater], timeout=20.0)
            swept = sweep_haproxy(self.layout.haproxy_cfg)
            if swept:
                print(f"edgestack up: HAProxy pids {swept} outlived the templater; stopped them",
                      file=sys.stderr)
            short_socket = master_socket(self.layout)
            if short_socket is not None:  # HAProxy leaves its master socket behind; this name is ours
                short_socket.unlink(missing_ok=True)
        if self.registry is not None:
            # A short grace is enough: every write the registry acknowledged is already durable,
            # so even the SIGKILL after it loses nothing.
            self.http.close()
            stop_children([self.registry], timeout=REGISTRY_STOP_GRACE)
        if started:
            control.remove_state(self.layout.root)
            kept = "" if self.args.dev else f"; registry data kept in {self._shown(self.layout.registry)}"
            print(f"edgestack up: stopped{kept}", flush=True)

    def _refuse_queued(self) -> None:
        while True:
            try:
                _message, reply = self.requests.get_nowait()
            except queue.Empty:
                return
            reply.put({"ok": False, "error": "the stack is stopping"})

    def _children(self) -> list[Child]:
        parts = [p for p in (self.registry, self.templater) if p is not None]
        return parts + [i.child for group in self.instances.values() for i in group]

    # ----------------------------------------------------------------- helpers

    def wait_for(self, what: str, probe: Callable[[], Any], child: Child, timeout: float) -> Any:
        """Poll probe until it returns something truthy; the child exiting or the deadline is an error."""
        deadline = time.monotonic() + timeout
        while True:
            self._interruptible()
            if not child.running():
                raise StackError(f"{child.name} exited (code {child.proc.returncode}) while starting; "
                                 f"last lines of {self._shown(child.log_path)}:\n{child.log_tail()}")
            try:
                value = probe()
            except (requests.RequestException, ValueError, KeyError, OSError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise StackError(f"{what} did not come up within {timeout:.0f}s; last lines of "
                                 f"{self._shown(child.log_path)}:\n{child.log_tail()}")
            time.sleep(0.1)

    def _interruptible(self) -> None:
        if self.signalled is not None:
            raise Interrupted()

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, **extra)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def status(self, name: str, state: str, detail: str, child: Child | None = None,
               pid: int | None = None) -> None:
        pid = pid or (child.pid if child else None)
        suffix = f"  (pid {pid})" if pid else ""
        print(f"  {name:<11}{state:<9}{detail}{suffix}", flush=True)

    def _shown(self, path: Path) -> str:
        """Paths relative to the working directory when under it: shorter lines for the user."""
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "root": str(self.layout.root),
            "control_socket": str(control.socket_path(self.layout.root)),
            "registry": {"pid": self.registry.pid if self.registry else None, "http": self.http_addr,
                         "dns": f"127.0.0.1:{self.args.dns_port}", "dev": self.args.dev},
            "templater": {"pid": self.templater.pid if self.templater else None,
                          "config": str(self.layout.templater_hcl),
                          "metrics": (f"127.0.0.1:{self.args.metrics_port}" if self.args.metrics_port
                                      else None)},
            "haproxy": {"config": str(self.layout.haproxy_cfg), "front": f"127.0.0.1:{self.args.front_port}",
                        "stats": f"127.0.0.1:{self.args.stats_port}" if self.args.stats_port else None,
                        "pids": haproxy_pids(self.layout.haproxy_cfg)},
            "instances": {s: [i.as_state() for i in group] for s, group in self.instances.items()},
        }

    def write_state(self) -> None:
        control.write_state(self.layout.root, self.state())

    def print_summary(self) -> None:
        a = self.args
        env = "" if a.http_port == 8500 else f"export CONSUL_HTTP_ADDR={self.http_addr}\n    "
        shown_dir = self._shown(self.layout.root)
        data_dir = "" if shown_dir == ".edgestack" else f"-data-dir {shown_dir} "
        cli = _cli_name()
        lines = [
            "", "edgestack is up:",
            f"  HAProxy front   http://127.0.0.1:{a.front_port}/",
        ]
        if a.stats_port:
            lines.append(f"  HAProxy stats   http://127.0.0.1:{a.stats_port}/stats   "
                         f"(Prometheus: http://127.0.0.1:{a.stats_port}/metrics)")
        lines += [f"  registry HTTP   http://{self.http_addr}/v1/catalog/services",
                  f"  registry DNS    127.0.0.1:{a.dns_port}   "
                  f"(dig @127.0.0.1 -p {a.dns_port} {DEMO_SERVICE}.service.consul SRV)"]
        if a.metrics_port:
            lines.append(f"  templater       http://127.0.0.1:{a.metrics_port}/metrics")
        lines += [
            "", "Try next (in another terminal):",
            f"    {env}curl http://127.0.0.1:{a.front_port}/   # each request answered by the next instance",
            f"    {cli} scale {data_dir}{DEMO_SERVICE} 5   # HAProxy follows through the Runtime API",
            f"    {cli} catalog services",
            f"    {cli} kv put haproxy/backends/web 'http-response set-header X-Edge hello'",
            f"    cat {self._shown(self.layout.haproxy_cfg)}",
            "", "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)


def _cli_name() -> str:
    """`edgestack` when it is on PATH, else the venv's script as the user can type it (bin/up uses .venv)."""
    if shutil.which("edgestack"):
        return "edgestack"
    script = Path(sys.executable).parent / "edgestack"
    try:
        return str(script.relative_to(Path.cwd())) if script.exists() else "edgestack"
    except ValueError:
        return str(script)


def backend_name(service: str) -> str:
    """The HAProxy backend the bundled template gives a service (its sanitized name)."""
    from templater.render import sanitize

    return sanitize(service)


def serving_servers(http: requests.Session, stats_port: int, backend: str) -> list[str]:
    """Servers of `backend` HAProxy would send traffic to (not in maintenance, not down), from `;csv`."""
    text = http.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2).text
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [row["svname"] for row in rows
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND")
            and not (row.get("status") or "").startswith(("MAINT", "DOWN", "DRAIN"))]


def _recorded_pids(state: dict[str, Any]) -> list[int]:
    pids = [state.get("registry", {}).get("pid"), state.get("templater", {}).get("pid")]
    pids += [i.get("pid") for group in state.get("instances", {}).values() for i in group]
    return [int(p) for p in pids if p]


def _ours(pid: int) -> bool:
    """A pid from an old state file may have been reused: only touch our own kinds of process."""
    argv = " ".join(cmdline(pid))
    return any(word in argv for word in ("-m registry", "-m templater", "demo-app"))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return Stack(args, Layout(Path(args.data_dir).resolve())).run()


# --------------------------------------------------------------------------- scale


def build_scale_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgestack scale", allow_abbrev=False,
                                description="Start or stop demo instances of a running `edgestack up`.")
    p.add_argument("-data-dir", "--data-dir", dest="data_dir", default=".edgestack",
                   help="the running stack's directory (default ./.edgestack)")
    p.add_argument("service", help=f"service name (the demo service is {DEMO_SERVICE!r})")
    p.add_argument("count", type=int, help="how many instances should run")
    return p


def scale_main(argv: list[str]) -> int:
    args = build_scale_parser().parse_args(argv)
    root = Path(args.data_dir).resolve()
    state = control.read_state(root)
    hint = (f"no running `edgestack up` found in {args.data_dir} (start one with `edgestack up`, "
            "or point -data-dir at its directory)")
    if not state:
        print(f"edgestack scale: {hint}", file=sys.stderr)
        return 1
    try:
        reply = control.request(Path(state["control_socket"]), {"op": "scale", "service": args.service,
                                                                "count": args.count})
    except OSError:
        print(f"edgestack scale: {hint}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"edgestack scale: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    changed = [f"started {', '.join(reply['started'])}" if reply["started"] else "",
               f"stopped {', '.join(reply['stopped'])}" if reply["stopped"] else ""]
    what = "; ".join(c for c in changed if c) or "nothing to change"
    print(f"{reply['service']}: {len(reply['instances'])} instance(s) ({what})")
    for instance in reply["instances"]:
        print(f"  {instance['id']:<12} 127.0.0.1:{instance['port']}  pid {instance['pid']}")
    print(reply["haproxy"])
    return 0 if reply.get("followed", True) else 1  # scripts must notice when HAProxy did not follow
