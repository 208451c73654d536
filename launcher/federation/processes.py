"""Processes we start and must stop, with everything they spawned.

Each starts in its own session; Flower detaches some children into sessions of their own (the
SuperExec), so stopping also walks /proc for every descendant before signalling.

A launcher that cannot stop them (SIGKILL, the OOM killer) still takes them along: each gets
SIGTERM when the launcher dies (Linux's parent-death signal), Flower's own children exit when
their parent does, and a small reaper process (:mod:`launcher.federation.reaper`) stops
whatever still carries the group's environment marker."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from launcher.federation.reaper import MARKER_VAR, STOPPED  # every group process carries the marker


log = logging.getLogger("flbackdoor")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
REAPER = Path(__file__).with_name("reaper.py")


class ProcessFailed(RuntimeError):
    """A process of the federation exited before the run was over."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class ProcessGroup:
    """Start named processes with logs in ``log_dir``; ``stop()`` (and ``with``) ends them all."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.env = {**env, MARKER_VAR: self.token}
        self.procs: dict[str, subprocess.Popen] = {}
        self.optional: set[str] = set()
        self.reported: set[str] = set()
        self.commands: dict[str, list[str]] = {}  # of the processes restarted when they die
        self.restarts: dict[str, int] = {}
        self.stopping = False
        self.lock = threading.RLock()  # check_alive runs on a watchdog thread too
        self.reaper: subprocess.Popen | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], critical: bool = True,
              restart: bool = False) -> subprocess.Popen:
        """``critical=False``: the run survives this process's death (a SuperNode: the server
        goes on without its replies); its exit is only logged. ``restart``: a process that dies
        is started again by the next :meth:`check_alive` (a warm ClientApp runner: its
        SuperNode's tasks would wait for it forever), at most ``MAX_RESTARTS`` times."""
        with self.lock:
            if self.reaper is None:
                self.reaper = start_reaper(self.token)
            log = (self.log_dir / f"{name}.log").open("ab")
            # The parent-death signal fires when the starting *thread* ends: a process restarted
            # from the watchdog thread would die with it. The reaper still takes it along.
            main = threading.current_thread() is threading.main_thread()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=die_with_parent(signal.SIGTERM) if main else None)
            log.close()
            self.procs[name] = proc
            if not critical:
                self.optional.add(name)
            if restart:
                self.commands[name] = cmd
            return proc

    MAX_RESTARTS = 5

    def check_alive(self) -> None:
        with self.lock:
            for name, proc in list(self.procs.items()):
                if proc.poll() is None or self.stopping:
                    continue
                where = f"{name} {_ended(proc.returncode)}; see {self.log_dir / name}.log"
                if name in self.commands and self.restarts.get(name, 0) < self.MAX_RESTARTS:
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    log.warning("%s: restarting it (%d of at most %d)", where,
                                self.restarts[name], self.MAX_RESTARTS)
                    self.start(name, self.commands[name], name not in self.optional, True)
                    continue
                if name not in self.optional:
                    raise ProcessFailed(where)
                if name not in self.reported:
                    self.reported.add(name)
                    log.warning("%s (the run goes on without it)", where)

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{what} not ready after {timeout:.0f}s; logs in {self.log_dir}")
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM everything, SIGKILL what is left after ``grace`` seconds. A second Ctrl-C or
        SIGTERM while stopping must not cut the cleanup short, so both are ignored meanwhile."""
        with _signals_ignored():
            with self.lock:
                self.stopping = True
            self._stop(grace)
            self._stop_reaper(grace)

    def _stop_reaper(self, grace: float) -> None:
        """Close its pipe: it sweeps up anything still marked (normally nothing) and exits."""
        if self.reaper is None:
            return
        reaper, self.reaper = self.reaper, None
        assert reaper.stdin is not None
        try:
            reaper.stdin.write(STOPPED)
            reaper.stdin.close()
        except BrokenPipeError:  # it is gone already
            pass
        try:
            reaper.wait(grace + 5)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.wait()

    def _stop(self, grace: float) -> None:
        family = descendants([p.pid for p in self.procs.values()])
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        _signal_pids(family, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # children left behind in the session too
            proc.wait()
        while time.monotonic() < deadline and any(_alive(p) for p in family):
            time.sleep(0.1)
        _signal_pids(family, signal.SIGKILL)

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the thread that started it (the launcher's
    main thread) dies, however it died. Linux only; elsewhere a no-op."""
    parent = os.getpid()
    if not sys.platform.startswith("linux"):
        return lambda: None
    # Looked up here, before the fork: the child (of a process that may have threads) only
    # makes system calls, no dlopen.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: the signal would never come
            os.kill(os.getpid(), sig)

    return preexec


def start_reaper(token: str, grace: float = 5.0) -> subprocess.Popen:
    """The reaper (``reaper.py``): its own session, so a terminal's Ctrl-C reaches the launcher
    only; it waits for end of file on the pipe whose write end only this process holds."""
    # -I: stdlib only, and not this folder first on sys.path (its docker.py, tls.py, ...).
    return subprocess.Popen([sys.executable, "-I", str(REAPER), token, str(grace)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            start_new_session=True)


@contextlib.contextmanager
def _signals_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN)
           for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(roots: list[int]) -> list[int]:
    """Every live process below ``roots`` (Linux /proc), children before grandchildren."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found: list[int] = []
    frontier = list(roots)
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in found]
        found += kids
        frontier = kids
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent's wait() is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
