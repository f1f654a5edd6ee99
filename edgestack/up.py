"""`edgestack up`: the edge stack as local processes (for now: the registry agent on embedded defaults)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgestack up", allow_abbrev=False,
                                description="Run the edge stack on this machine.")
    p.add_argument("-dev", "--dev", action="store_true", help="keep the registry in memory")
    p.add_argument("-data-dir", "--data-dir", dest="data_dir", default=".edgestack",
                   help="where the stack keeps its state (default ./.edgestack)")
    p.add_argument("-http-port", "--http-port", dest="http_port", type=int, default=8500)
    p.add_argument("-dns-port", "--dns-port", dest="dns_port", type=int, default=8600)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    store = ["-dev"] if args.dev else ["-data-dir", str(Path(args.data_dir) / "registry")]
    cmd = [sys.executable, "-m", "registry", *store, "-http-port", str(args.http_port),
           "-dns-port", str(args.dns_port), "-node", os.environ.get("EDGESTACK_NODE", "edge")]
    print(f"registry: http://127.0.0.1:{args.http_port}  (try: edgestack kv put hello world; "
          "edgestack catalog services)")
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def scale_main(argv: list[str]) -> int:
    print("edgestack scale: needs the full `edgestack up` stack (issue 7)", file=sys.stderr)
    return 1
