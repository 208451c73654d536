"""The runners' compute slots: never more holders than slots, across real processes, and a
killed holder's slot comes free."""

import multiprocessing
import os
import signal
import time

import pytest

from supernode.compute_slots import ComputeSlots, default_count


def _hold(folder, count, log, hold_s):
    with ComputeSlots(folder, count, poll_s=0.005):
        with open(log, "a") as f:
            f.write(f"+ {time.monotonic()}\n")
        time.sleep(hold_s)
        with open(log, "a") as f:
            f.write(f"- {time.monotonic()}\n")


def _most_at_once(log) -> int:
    """Holders at once, from their logs: '+' is written after taking the slot and '-' before
    giving it back, so each logged window lies inside its hold."""
    events = sorted((float(t), sign == "+") for sign, t in (line.split() for line in open(log)))
    now = most = 0
    for _, taken in events:
        now += 1 if taken else -1
        most = max(most, now)
    return most


@pytest.mark.parametrize("count", [1, 2])
def test_never_more_holders_than_slots(tmp_path, count):
    log = tmp_path / "events"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(tmp_path, count, log, 0.15)) for _ in range(5)]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert _most_at_once(log) == count
    # five holds of 0.15 s through `count` slots: serialised into ceil(5 / count) waves
    assert time.monotonic() - started >= 0.15 * -(-5 // count) - 0.05


def _hold_forever(folder, ready):
    slots = ComputeSlots(folder, 1)
    slots.acquire()
    ready.set()
    time.sleep(60)


def test_a_killed_holder_frees_its_slot(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(tmp_path, ready))
    holder.start()
    assert ready.wait(10)
    slots = ComputeSlots(tmp_path, 1, poll_s=0.01)
    waiter = ctx.Process(target=_hold, args=(tmp_path, 1, tmp_path / "events", 0.0))
    waiter.start()
    waiter.join(0.5)
    assert waiter.exitcode is None  # blocked while the holder lives
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    waiter.join(10)
    assert waiter.exitcode == 0
    with slots:  # and free again after the waiter
        assert slots.waited_s < 1.0


def test_slot_count_is_checked(tmp_path):
    with pytest.raises(ValueError, match="need at least 1"):
        ComputeSlots(tmp_path, 0)
    assert default_count() == len(os.sched_getaffinity(0))
