"""One message wave: push, then pull with a short poll until every reply is in or time is up.

``Grid.send_and_receive`` sleeps 3 s between pulls; a round that finishes in 1 s should not
wait 3. Nodes that did not answer in time are reported, not fatal: the round goes on with the
replies that came.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid


@dataclass
class Wave:
    replies: list[Message] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # node ids that sent nothing in time
    errors: dict[int, str] = field(default_factory=dict)  # node id -> error reason

    @property
    def ok(self) -> list[Message]:
        return [m for m in self.replies if not m.has_error()]


def send_and_collect(grid: Grid, messages: list[Message], timeout: float, poll_interval: float) -> Wave:
    dst = [m.metadata.dst_node_id for m in messages]
    ids = list(grid.push_messages(messages))
    pending = {mid: node for mid, node in zip(ids, dst) if mid}
    wave = Wave(missing=[node for mid, node in zip(ids, dst) if not mid])
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            wave.replies.append(reply)
            if reply.has_error():
                wave.errors[node] = reply.error.reason
        if pending:
            time.sleep(poll_interval)
    wave.missing += sorted(pending.values())
    if wave.missing:
        log(WARNING, "no reply in %.0fs from node(s) %s", timeout, wave.missing)
    for node, reason in wave.errors.items():
        log(WARNING, "error reply from node %s: %s", node, reason)
    return wave
