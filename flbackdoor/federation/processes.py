"""Processes we start and must stop, with everything they spawned.

Each starts in its own session; Flower detaches some children into sessions of their own (the
SuperExec), so stopping also walks /proc for every descendant before signalling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


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
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ProcessFailed(
                    f"{name} exited with code {proc.returncode}; see {self.log_dir / name}.log")

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{what} not ready after {timeout:.0f}s; logs in {self.log_dir}")
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
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
