"""`edgestack template` / `python -m templater`: consul-template's flags, our config, signals.

Flags accept `-flag value`, `-flag=value` and `--flag` like consul-template's Go flag package.
Precedence, as in consul-template: CONSUL_HTTP_ADDR/CONSUL_HTTP_TOKEN < config files < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Sequence

from templater.config import (
    DEFAULT_ADDRESS,
    Config,
    ConfigError,
    ConsulConfig,
    finalize,
    load_config,
    parse_template_flag,
    parse_wait,
)
from templater.metrics import Metrics
from templater.runner import Runner

EXIT_USAGE = 2
LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "err": logging.ERROR, "error": logging.ERROR}


def build_parser(prog: str = "edgestack template") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Render files from registry data (consul-template compatible) and keep them installed.")

    def flag(name: str, **kwargs: object) -> None:
        parser.add_argument(f"-{name}", f"--{name}", **kwargs)  # type: ignore[arg-type]

    flag("config", action="append", default=[], metavar="FILE",
         help="HCL or JSON config file or directory (repeatable, merged in order)")
    flag("template", action="append", default=[], metavar="SRC:DST[:COMMAND]",
         help="a template to render (repeatable)")
    flag("consul-addr", dest="consul_addr", metavar="ADDR",
         help=f"registry address (default: CONSUL_HTTP_ADDR, then {DEFAULT_ADDRESS})")
    flag("token", help="ACL token (default: CONSUL_HTTP_TOKEN)")
    flag("once", action="store_true", help="render every template once, run commands, exit")
    flag("dry", action="store_true", help="print renders to stdout; write nothing, run nothing")
    flag("wait", metavar="MIN[:MAX]", help="quiescence before rendering, e.g. 2s:10s (max defaults to 4×min)")
    flag("log-level", dest="log_level", choices=sorted(LOG_LEVELS), help="default: info")
    flag("pid-file", dest="pid_file", metavar="PATH", help="write the process id here while running")
    flag("metrics-addr", dest="metrics_addr", metavar="HOST:PORT", help="serve Prometheus metrics here")
    return parser


def build_config(args: argparse.Namespace) -> Config:
    """Environment defaults, then config files in order, then flags; raises ConfigError."""
    base = Config(consul=ConsulConfig(address=os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS,
                                      token=os.environ.get("CONSUL_HTTP_TOKEN") or None))
    config = load_config(args.config, base)
    updates: dict[str, object] = {"once": args.once, "dry": args.dry}
    consul = config.consul
    if args.consul_addr:
        consul = dataclasses.replace(consul, address=args.consul_addr)
    if args.token:
        consul = dataclasses.replace(consul, token=args.token)
    updates["consul"] = consul
    if args.template:
        updates["templates"] = config.templates + tuple(parse_template_flag(t) for t in args.template)
    if args.wait:
        try:
            updates["wait"] = parse_wait(args.wait, "-wait")
        except ValueError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1], field="-wait") from exc
    for name in ("log_level", "pid_file", "metrics_addr"):
        if getattr(args, name):
            updates[name] = getattr(args, name)
    return finalize(dataclasses.replace(config, **updates))


def setup_logging(level: str) -> None:
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {level!r}; use {', '.join(sorted(LOG_LEVELS))}", field="log_level")
    logging.basicConfig(stream=sys.stderr, force=True, level=LOG_LEVELS[level.lower()],
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    if level.lower() != "trace":  # these log every request / inotify event at debug: only on trace
        for noisy in ("urllib3", "watchdog"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None, prog: str = "edgestack template") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = build_config(args)
        setup_logging(config.log_level)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _raise_fd_limit()
    metrics = Metrics()
    runner = Runner(config, metrics, config_loader=lambda: build_config(args))
    try:
        if config.metrics_addr:
            metrics.serve(config.metrics_addr)
        _write_pid(config.pid_file)
        _install_signals(runner)
        return runner.run()
    except OSError as exc:
        logging.getLogger("templater").error("%s", exc)
        runner.shutdown()
        return 1
    finally:
        metrics.close()
        _remove_pid(config.pid_file)


def _raise_fd_limit() -> None:
    """One parked connection per watched query: 1,000 services need more than the usual 1,024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


def _install_signals(runner: Runner) -> None:
    """SIGHUP re-reads config and templates; SIGINT/SIGTERM stop cleanly (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGHUP, lambda *_: runner.request_reload())
    signal.signal(signal.SIGINT, lambda *_: runner.request_stop())
    signal.signal(signal.SIGTERM, lambda *_: runner.request_stop())


def _write_pid(path: str | None) -> None:
    if path:
        with open(path, "w") as handle:
            handle.write(f"{os.getpid()}\n")


def _remove_pid(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
