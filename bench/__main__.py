"""`python -m bench [name ...]`: run the named benchmarks (default: every one that exists), in order.

A benchmark is a module bench/<name>_bench.py exposing `main()`; it may also name the Debian
packages it needs in `APT_PACKAGES`, which `python -m bench --packages` lists so that bench/run
can install them before anything runs. Modules other engineers have not written yet are skipped,
so the one entry command keeps working while the set of benchmarks grows.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

#: The order benchmarks run in; any other bench/<name>_bench.py runs after these, by name.
ORDER = ("kv", "dns", "checks", "templater", "haproxy")

HERE = Path(__file__).resolve().parent


def discovered() -> list[str]:
    """Every bench/<name>_bench.py present, known ones first: a new benchmark needs no registration."""
    found = sorted(path.name.removesuffix("_bench.py") for path in HERE.glob("*_bench.py"))
    return [name for name in ORDER if name in found] + [name for name in found if name not in ORDER]


def module_name(name: str) -> str:
    return f"bench.{name.removesuffix('_bench')}_bench"


def available(name: str) -> bool:
    return (HERE / f"{name.removesuffix('_bench')}_bench.py").exists()


def selected(names: Sequence[str]) -> list[str]:
    """The benchmarks to run: the named ones (each must exist), or all that exist."""
    if not names:
        return discovered()
    unknown = [name for name in names if not available(name)]
    if unknown:
        known = ", ".join(discovered())
        raise SystemExit(f"no such benchmark: {', '.join(unknown)} (available: {known})")
    return [name.removesuffix("_bench") for name in names]


def packages(names: Sequence[str]) -> list[str]:
    """Debian packages the selected benchmarks declare (APT_PACKAGES), without duplicates."""
    wanted: list[str] = []
    for name in names:
        try:
            module = importlib.import_module(module_name(name))
        except Exception as exc:  # noqa: BLE001 - reported again, with its traceback, when it runs
            print(f"bench: cannot import {module_name(name)}: {exc!r}", file=sys.stderr)
            continue
        for package in getattr(module, "APT_PACKAGES", ()):
            if package not in wanted:
                wanted.append(package)
    return wanted


def run(name: str) -> bool:
    """Run one benchmark's main() with a clean argv; a failure is reported, never fatal to the rest."""
    print(f"\n===== bench: {name} =====", flush=True)
    began = time.monotonic()
    saved = sys.argv
    sys.argv = [f"bench/{name}_bench.py"]
    try:
        status = importlib.import_module(module_name(name)).main()
        ok = status in (None, 0)  # main() may return an exit status
    except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
        traceback.print_exc()
        ok = False
    finally:
        sys.argv = saved
    print(f"===== {name}: {'done' if ok else 'FAILED'} in {time.monotonic() - began:.0f} s =====", flush=True)
    return ok


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--packages"]:
        print("\n".join(packages(selected([name for name in argv[1:] if not name.startswith("-")]))))
        return 0
    if argv[:1] in (["-h"], ["--help"], ["--list"]):
        print(__doc__)
        print("benchmarks here:", ", ".join(discovered()))
        return 0
    results = [run(name) for name in selected(argv)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
