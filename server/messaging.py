"""One message wave: push, then pull with a short poll until every reply is in or time is up.

``Grid.send_and_receive`` sleeps 3 s between pulls; a round that finishes in 1 s should not
wait 3. Nodes that did not answer in time are reported, not fatal: the round goes on with the
replies that came.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from flbackdoor.config import ExperimentConfig


@dataclass
class Wave:
    replies: list[Message] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # node ids that sent nothing in time
    errors: dict[int, str] = field(default_factory=dict)  # node id -> error reason

    @property
    def ok(self) -> list[Message]:
        return [m for m in self.replies if not m.has_error()]


def wave_window(cfg: ExperimentConfig) -> int:
    """``server.max_in_flight`` resolved: in simulation, twice the Ray workers (actors) Flower
    fits on this machine, so every worker has its next message queued while the engine's scan
    (every pending message, for every virtual node, every 0.1 s) stays short."""
    if cfg.server.max_in_flight >= 0:
        return cfg.server.max_in_flight
    f = cfg.federation
    if f.mode != "simulation" or f.ray_address:  # a Ray cluster's size is not known here
        return 0
    workers = max(1, (f.num_cpus or os.cpu_count() or 1) // f.client_num_cpus)
    if f.client_num_gpus > 0:
        import torch

        workers = min(workers, max(1, int(torch.cuda.device_count() / f.client_num_gpus)))
    return 2 * workers


def send_and_collect(grid: Grid, messages: list[Message], timeout: float, poll_interval: float,
                     window: int = 0) -> Wave:
    """Push ``messages`` (at most ``window`` unanswered at a time; 0: all at once) and collect
    the replies until all are in or ``timeout`` has passed."""
    waiting = list(messages)
    pending: dict[str, int] = {}  # message id -> destination node
    wave = Wave()

    def push() -> None:
        room = len(waiting) if window <= 0 else window - len(pending)
        if room <= 0 or not waiting:
            return
        batch, waiting[:room] = waiting[:room], []
        for mid, msg in zip(grid.push_messages(batch), batch):
            if mid:
                pending[mid] = msg.metadata.dst_node_id
            else:
                wave.missing.append(msg.metadata.dst_node_id)

    push()
    deadline = time.monotonic() + timeout
    while (pending or waiting) and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            wave.replies.append(reply)
            if reply.has_error():
                wave.errors[node] = reply.error.reason
        if waiting:
            push()
        if pending:
            time.sleep(poll_interval)
    wave.missing += sorted([*pending.values(), *(m.metadata.dst_node_id for m in waiting)])
    if wave.missing:
        log(WARNING, "no reply in %.0fs from node(s) %s", timeout, wave.missing)
    for node, reason in wave.errors.items():
        log(WARNING, "error reply from node %s: %s", node, reason)
    return wave
