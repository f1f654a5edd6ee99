"""Run HAProxy in master-worker mode as a supervised child, or attach to one that already runs.

Why a child and not a daemon: the templater must notice when HAProxy dies and bring it back with
the last config that passed `haproxy -c`, and stop it when the templater stops. Why attach: a
templater restarted after a crash (or run beside an HAProxy it does not own) must find the running
master through its socket and reload it, not start a second HAProxy on the same ports.

The child runs in its own session, so a Ctrl-C aimed at the templater does not kill HAProxy behind
its back: the templater stops it deliberately (SIGTERM to the master, which stops its workers).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from templater.haproxy.mastercli import MasterCLI, alert_lines


class HAProxyStartError(RuntimeError):
    """HAProxy did not come up; the message carries its ALERT lines."""

    def __init__(self, message: str, alerts: list[str]):
        super().__init__(message + ("\n" + "\n".join(alerts) if alerts else ""))
        self.alerts = alerts


class HAProxyProcess:
    """One HAProxy master: spawned by us (`owned`) or attached through its socket.

    supervise=True: HAProxy is the templater's to keep alive: started if no master answers, adopted if
    one does, restarted when it dies, stopped with the templater. supervise=False: attach only.
    """

    def __init__(self, binary: str, config_path: str, master_socket: str, log: logging.Logger,
                 supervise: bool = True, start_timeout: float = 15.0, poll_interval: float = 0.5,
                 on_restart: Callable[[], None] | None = None,
                 last_good: Callable[[], str | None] | None = None,
                 check: Callable[[str], bool] | None = None):
        self.binary = binary
        self.config_path = os.path.abspath(config_path)
        self.master_socket = os.path.abspath(master_socket)
        self.log = log
        self.supervise = supervise
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.on_restart = on_restart
        self.last_good = last_good
        self.check = check
        self.master = MasterCLI(self.master_socket)
        self.lock = threading.RLock()      # shared with the controller: no restart during a reload
        self.owned = False
        self.restarts = 0
        self._child: subprocess.Popen | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=300)
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Attach to a master already answering on the socket, else (when supervising) spawn one."""
        with self.lock:
            if self.master.alive():
                self.owned = False
                self.log.info("attached to running HAProxy master on %s", self.master_socket)
            elif self.supervise:
                self._spawn()
            else:
                raise HAProxyStartError(f"no HAProxy master answers on {self.master_socket} "
                                        "and supervise is off", [])
        if self.supervise and self._watcher is None:
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._watch, name="haproxy-supervisor", daemon=True)
            self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and stop HAProxy: the child we started, or (when supervising) the master we
        adopted by attaching. With supervise off, HAProxy belongs to someone else and keeps running."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None
        with self.lock:
            if self.owned and self._child is not None:
                self._terminate(self._child, timeout)
            elif self.supervise:
                self._terminate_attached(timeout)
            self._child = None
            self.owned = False

    def detach(self, timeout: float = 10.0) -> None:
        """Stop supervising but leave HAProxy serving: for `-once`, and for a SIGHUP that rebuilds the
        controller (the next controller attaches to the same master, so traffic never stops)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None
        with self.lock:
            self._child = None
            self.owned = False

    @property
    def pid(self) -> int | None:
        """The master's pid (from `show proc` when attached)."""
        if self._child is not None and self._child.poll() is None:
            return self._child.pid
        try:
            table = self.master.show_proc(connect_retry=0.2)
        except Exception:  # noqa: BLE001 - no master, no pid
            return None
        return table.master.pid if table.master else None

    def recent_output(self) -> list[str]:
        """The last lines HAProxy printed (startup notices, ALERTs, worker exits)."""
        return list(self._output)

    # --- internals -----------------------------------------------------------------------------

    def _command(self) -> list[str]:
        return [self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-f", self.config_path]

    def _spawn(self) -> None:
        """Start a master and wait until it has a worker; raise with its ALERT lines if it fails."""
        self._restore_last_good_if_broken()
        self._output.clear()
        child = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=os.path.dirname(self.config_path),
                                 start_new_session=True)
        threading.Thread(target=self._pump, args=(child,), name="haproxy-output", daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if child.poll() is not None:
                time.sleep(0.05)  # let the pump read the last lines
                output = "\n".join(self._output)
                raise HAProxyStartError(f"haproxy exited with code {child.returncode} at startup",
                                        alert_lines(output))
            if self.master.alive():
                self._child, self.owned = child, True
                self.log.info("started HAProxy master pid %d (%s)", child.pid, self.config_path)
                return
            time.sleep(0.05)
        self._terminate(child, 5.0)
        raise HAProxyStartError(f"haproxy did not answer on {self.master_socket} within "
                                f"{self.start_timeout:.0f}s", alert_lines("\n".join(self._output)))

    def _restore_last_good_if_broken(self) -> None:
        """Before a (re)start: if the file on disk fails the check, put the last good config back."""
        if self.check is None or self.last_good is None or self.check(self.config_path):
            return
        good = self.last_good()
        if good is None:
            return
        self.log.warning("%s fails the check; restarting HAProxy with the last good config", self.config_path)
        staged = self.config_path + ".restore"
        with open(staged, "w") as handle:
            handle.write(good)
        os.replace(staged, self.config_path)

    def _pump(self, child: subprocess.Popen) -> None:
        """Forward HAProxy's output to our log: ALERT as errors; HAProxy's WARNINGs are mostly routine
        (servers entering maintenance, old workers exiting), so they are info."""
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self._output.append(line)
            if line.startswith("[ALERT]"):
                self.log.error("haproxy: %s", line)
            elif line.startswith("[WARNING]"):
                self.log.info("haproxy: %s", line)
            else:
                self.log.debug("haproxy: %s", line)
        child.stdout.close()

    def _watch(self) -> None:
        """Supervisor loop: bring HAProxy back when the master we own (or attached to) is gone."""
        misses = 0
        while not self._stopping.wait(self.poll_interval):
            with self.lock:
                if self._stopping.is_set():
                    return
                if self.owned and self._child is not None:
                    gone = self._child.poll() is not None
                else:
                    misses = 0 if self.master.alive() else misses + 1
                    gone = misses >= 3
                if gone:
                    misses = 0
                    self._restart()

    def _restart(self) -> None:
        code = self._child.returncode if self._child is not None else None
        self.log.error("HAProxy master is gone (exit code %s); restarting it", code)
        self._child, self.owned = None, False
        try:
            self._spawn()
        except (HAProxyStartError, OSError) as exc:
            self.log.error("HAProxy restart failed (will retry): %s", exc)
            return
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart()

    def _terminate_attached(self, timeout: float) -> None:
        """SIGTERM an adopted master (found through `show proc`) and wait until its socket is silent."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.master.alive():
            time.sleep(0.05)

    @staticmethod
    def _terminate(child: subprocess.Popen, timeout: float) -> None:
        if child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout)
