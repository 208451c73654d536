"""At most N ClientApp computations at a time among the warm runners of one host.

A round that samples ten nodes of a 2-core host hands all ten runners a task at once. Ten
single-threaded trainings time-sliced on two cores evict each other's caches: measured here
(the MNIST CNN, one epoch of 6,000 images, one thread each), a task's CPU time grew from 2.4 s
with two at a time to 3.6 s with ten in a plain loop, and by 1.2-1.4 times against the same ten
through these slots in ``benchmarks/compute_slots.py``. Two at a time is what the Simulation
Engine's Ray does with one CPU per client. The runners therefore take a slot for
the ClientApp call only: pulling the input and pushing the reply stay concurrent, and the
task's heartbeats go on while it waits.

A slot is an exclusive ``flock`` on one of N files in a folder of the host's: the kernel
releases it when its holder's file is closed, however the holder died, so a killed runner
never keeps one. A waiting runner tries every slot, then sleeps ``poll_s``: a few hundred
wake-ups a second at most, against a task of seconds.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def default_count() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


class ComputeSlots:
    """``with slots:`` holds one of ``count`` slots in ``directory`` for the block; the wait
    it took is in ``waited_s`` afterwards."""

    def __init__(self, directory: Path, count: int, poll_s: float = 0.02) -> None:
        if count < 1:
            raise ValueError(f"compute slots: need at least 1, got {count}")
        self.paths = [directory / f"slot-{i}" for i in range(count)]
        self.poll_s = poll_s
        self.fd: int | None = None
        self.waited_s = 0.0

    def acquire(self) -> int:
        """The index of the slot now held; blocks until one is free."""
        assert self.fd is None, "a slot is held already"
        started = time.monotonic()
        while True:
            for index, path in enumerate(self.paths):
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.fd, self.waited_s = fd, time.monotonic() - started
                return index
            time.sleep(self.poll_s)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the only descriptor of that open file drops its lock

    def __enter__(self) -> "ComputeSlots":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
