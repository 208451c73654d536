"""One process that imports PyTorch and the app once and forks a warm ClientApp runner for each
SuperNode of a host.

Ten runners that each import PyTorch, the app and the defenses' libraries cost ten imports at
start (about 40 s before the last one was ready, on 2 cores with 10 SuperNodes) and ten private
copies of those modules' Python objects. Forked from one process that has imported them, each
runner starts in milliseconds and shares those pages with its siblings until it writes to them
(copy-on-write). Nothing has run a tensor operation, started a thread or touched CUDA before
the fork (the host checks the last two), so the children's OpenMP pools, CUDA contexts and HTTP
clients are their own.

The host supervises its runners: one that dies is forked again (at most ``MAX_RESTARTS`` times
each, logged), so its SuperNode's tasks never wait forever; SIGTERM or SIGINT to the host is
passed to every runner, and the host exits once they have. A runner gets SIGTERM when the host
dies, however it died (Linux's parent-death signal), so a launcher that restarts the host never
leaves two runners on one SuperNode. Each runner writes to its own log file and touches its own
ready file.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.federation.processes import die_with_parent

log = logging.getLogger("flbackdoor.clientapp_runner")

MAX_RESTARTS = 5


@dataclass(frozen=True)
class Node:
    """One SuperNode served by the host: its name (the runner's log and ready file) and the
    address of its Runtime API."""

    name: str
    address: str

    @classmethod
    def parse(cls, spec: str) -> "Node":
        name, sep, address = spec.partition("=")
        if not sep or not name or not address or "/" in name:
            raise ValueError(f"--node {spec!r}: need NAME=HOST:PORT (a plain name)")
        return cls(name, address)


class RunnerHost:
    """Forks ``serve(node)`` for each node and keeps it running until stopped."""

    def __init__(self, nodes: list[Node], serve: Callable[[Node], None], log_dir: Path,
                 ready_dir: Path | None = None) -> None:
        if len({n.name for n in nodes}) != len(nodes):
            raise ValueError("two nodes with one name: " + ", ".join(n.name for n in nodes))
        self.nodes, self.serve = nodes, serve
        self.log_dir, self.ready_dir = log_dir, ready_dir
        self.children: dict[int, Node] = {}
        self.restarts: dict[str, int] = {}
        self.stopping = False

    def fork(self, node: Node) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        arm = die_with_parent(signal.SIGTERM)  # this process is the parent it watches
        pid = os.fork()
        if pid:
            self.children[pid] = node
            return pid
        code = 1
        try:
            self._become_runner(node, arm)
            self.serve(node)
            code = 0
        except KeyboardInterrupt:
            code = 0
        except BaseException as err:  # noqa: BLE001 - reported, then the host decides
            log.exception("runner %s failed: %s", node.name, err)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # never the host's atexit handlers or its finally blocks

    def _become_runner(self, node: Node, die_with_host: Callable[[], None]) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        die_with_host()
        out = os.open(self.log_dir / f"{node.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        if self.ready_dir is not None:
            (self.ready_dir / node.name).touch()

    def run(self) -> int:
        """Fork every runner, then wait; returns once every runner has ended (after a stop, or
        when none is left to restart)."""
        if threading.active_count() > 1:
            log.warning("%d threads before the fork: they do not exist in the runners",
                        threading.active_count())
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            # A forked child cannot use a CUDA context its parent made: each runner makes its
            # own on its first task.
            raise RuntimeError("CUDA was initialised before the runners were forked")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.ready_dir is not None:
            self.ready_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for node in self.nodes:
            self.fork(node)
        log.info("%d runners forked: %s", len(self.nodes),
                 ", ".join(f"{n.name} (pid {p}) -> {n.address}" for p, n in self.children.items()))
        while self.children:
            pid, status = os.waitpid(-1, 0)
            node = self.children.pop(pid, None)
            if node is None:
                continue
            if self.stopping:
                continue
            done = self.restarts.get(node.name, 0)
            how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exited with code {os.waitstatus_to_exitcode(status)}")
            if done >= MAX_RESTARTS:
                log.error("runner %s (pid %d) %s; restarted %d times already: its SuperNode "
                          "now has no runner", node.name, pid, how, done)
                continue
            self.restarts[node.name] = done + 1
            log.warning("runner %s (pid %d) %s: forking it again (%d of at most %d)", node.name,
                        pid, how, done + 1, MAX_RESTARTS)
            self.fork(node)
        return 0

    def _stop(self, signum: int, _frame) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
