"""The server's message wave (server/messaging.py): the in-flight window and what counts as
missing. The Grid here is a stand-in that answers instantly (a unit test of the window's
bookkeeping); the real Flower Grid runs the same code in every end-to-end test, windowed in
the simulation ones (the auto window on a 2-core machine is 4 of 10 clients)."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flbackdoor.config import ExperimentConfig
from server.messaging import send_and_collect, wave_window


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages are built inside a Flower task; outside one, Flower wants an identity set."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class InstantGrid:
    """Replies to every pushed message on the next pull; nodes in ``silent`` never answer and
    pushes to nodes in ``refused`` get no message id (as the SuperLink refuses a gone node)."""

    def __init__(self, silent=(), refused=()) -> None:
        self.silent, self.refused = set(silent), set(refused)
        self.pushed: dict[str, Message] = {}
        self.most_in_flight = 0
        self._next = 0

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id in self.refused:
                ids.append("")
                continue
            self._next += 1
            ids.append(str(self._next))
            self.pushed[str(self._next)] = msg
        self.most_in_flight = max(self.most_in_flight, len(self.pushed))
        return ids

    def pull_messages(self, ids):
        replies = []
        for mid in ids:
            msg = self.pushed.get(mid)
            if msg is not None and msg.metadata.dst_node_id not in self.silent:
                del self.pushed[mid]
                reply = Message(RecordDict(), reply_to=msg)
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                replies.append(reply)
        return replies


def wave(n: int) -> list[Message]:
    return [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node,
                    message_type="query.identify") for node in range(1, n + 1)]


def test_a_window_caps_the_unanswered_messages_and_every_node_still_gets_one():
    grid = InstantGrid()
    out = send_and_collect(grid, wave(10), timeout=5, poll_interval=0.001, window=3)
    assert grid.most_in_flight == 3
    assert sorted(m.metadata.src_node_id for m in out.replies) == list(range(1, 11))
    assert out.missing == []


def test_without_a_window_the_whole_wave_is_pushed_at_once():
    grid = InstantGrid()
    out = send_and_collect(grid, wave(10), timeout=5, poll_interval=0.001, window=0)
    assert grid.most_in_flight == 10 and len(out.replies) == 10


def test_silent_refused_and_never_sent_nodes_are_missing():
    # Two silent nodes fill a window of 2: the rest are never sent and count as missing too.
    grid = InstantGrid(silent={1, 2}, refused={3})
    out = send_and_collect(grid, wave(5), timeout=0.2, poll_interval=0.01, window=2)
    assert out.replies == []
    assert sorted(out.missing) == [1, 2, 3, 4, 5]
    # Without a window only the silent and refused ones are.
    grid = InstantGrid(silent={1, 2}, refused={3})
    out = send_and_collect(grid, wave(5), timeout=0.2, poll_interval=0.01)
    assert sorted(m.metadata.src_node_id for m in out.replies) == [4, 5]
    assert sorted(out.missing) == [1, 2, 3]


def test_auto_window_is_twice_the_ray_workers_in_simulation_and_off_elsewhere(monkeypatch):
    monkeypatch.setattr("server.messaging.os.cpu_count", lambda: 8)
    cfg = ExperimentConfig()
    sim = dataclasses.replace(cfg.federation, mode="simulation", client_num_cpus=2)
    assert wave_window(dataclasses.replace(cfg, federation=sim)) == 8
    assert wave_window(dataclasses.replace(
        cfg, federation=dataclasses.replace(sim, ray_address="auto"))) == 0
    assert wave_window(dataclasses.replace(cfg, federation=dataclasses.replace(sim, mode="local"))) == 0
    fixed = dataclasses.replace(cfg.server, max_in_flight=5)
    assert wave_window(dataclasses.replace(cfg, federation=sim, server=fixed)) == 5
