"""How `edgestack scale` finds and talks to a running `edgestack up`: a state file and a control socket.

Why both: the state file (`<dir>/stack.json`) says what runs — the pids, ports and addresses of every
part and demo instance — so a user (or a test) can see it, and a new `up` can tell a running stack
from a crashed one. The control socket lets `scale` ask the running `up` to start or stop demo
instances, so `up` stays the parent of every process it must stop on Ctrl-C.
Protocol: one JSON object per line, one request and one reply per connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_FILE = "stack.json"
SOCKET_NAME = "control.sock"
MAX_SOCKET_PATH = 100  # AF_UNIX paths stop at 107 bytes on Linux


def state_path(root: Path) -> Path:
    return root / STATE_FILE


def socket_path(root: Path) -> Path:
    """`<dir>/control.sock`, or a short path under the temp dir when `<dir>` is too deep for AF_UNIX."""
    path = root.resolve() / SOCKET_NAME
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"edgestack-{digest}.sock"


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    path = state_path(root)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_state(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(root).read_text())
    except (OSError, ValueError):
        return None


def remove_state(root: Path) -> None:
    for path in (state_path(root), state_path(root).with_suffix(".json.tmp")):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class ControlServer:
    """Serves requests on a Unix socket from a background thread; `handle` gives each reply."""

    def __init__(self, path: Path, handle: Callable[[dict[str, Any]], dict[str, Any]]):
        self.path = path
        handler = _handler_class(handle)
        if path.exists() or path.is_symlink():
            path.unlink()
        self.server = socketserver.ThreadingUnixStreamServer(str(path), handler)
        self.server.daemon_threads = True
        os.chmod(path, 0o600)
        self.thread = threading.Thread(target=self.server.serve_forever, name="edgestack-control",
                                       daemon=True)

    def start(self) -> ControlServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


Handle = Callable[[dict[str, Any]], dict[str, Any]]


def _handler_class(handle: Handle) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                request = json.loads(self.rfile.readline() or b"{}")
                bad = {"ok": False, "error": "bad request"}
                reply = handle(request) if isinstance(request, dict) else bad
            except ValueError:
                reply = {"ok": False, "error": "bad request: not JSON"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    return Handler


def request(path: Path, message: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to a running `up`; OSError when nothing listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        return json.loads(data)
    except ValueError:
        return {"ok": False, "error": "the running `edgestack up` gave no answer"}
