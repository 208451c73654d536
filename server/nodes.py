"""Who is who, and who is still there: a ``query.identify`` wave asks nodes for their partition
id, role and size; :class:`Membership` keeps the partition -> node map through a run.

The server cannot read a node's ``node_config``; in deployment a node's identity lives there
(``partition-id``, ``role``), in simulation Flower sets ``partition-id`` itself. One query wave at
start-up gives the server the same map in both; nodes that connect later (a restarted SuperNode
gets a new node id) are asked the same way before the round that first sees them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from flbackdoor import protocol as P
from server.messaging import send_and_collect


@dataclass(frozen=True)
class Node:
    node_id: int
    partition_id: int
    role: str  # "benign" | "malicious"
    num_examples: int = 0  # training examples the node holds (what it will report as n_k)


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """Node ids once ``count`` nodes are connected, or whatever connected by ``timeout``."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() >= deadline:
            return nodes
        if len(nodes) != last:
            log(INFO, "waiting for nodes: %d of %d connected", len(nodes), count)
            last = len(nodes)
        time.sleep(0.2)


def ask_identity(grid: Grid, node_ids: list[int], timeout: float, poll_interval: float) -> list[Node]:
    ask = [Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=n,
                   message_type=P.IDENTIFY) for n in node_ids]
    wave = send_and_collect(grid, ask, timeout, poll_interval)
    nodes = []
    for reply in wave.ok:
        try:
            info = reply.content[P.NODE]
            nodes.append(Node(reply.metadata.src_node_id, int(info[P.PARTITION_ID]),
                              str(info[P.ROLE]), int(info.get(P.NUM_EXAMPLES, 0))))
        except (KeyError, TypeError, ValueError) as err:
            log(WARNING, "node %s sent a malformed identity (%s): ignored",
                reply.metadata.src_node_id, err)
    return nodes


def merge(by_partition: dict[int, Node], found: list[Node], expected: int,
          replaceable: set[int] = frozenset()) -> list[int]:
    """Add ``found`` nodes to the partition map; a partition held by a live node keeps it, one
    in ``replaceable`` (its node went silent) passes to the newcomer. Returns the partitions
    that got a node."""
    placed = []
    for node in found:
        holder = by_partition.get(node.partition_id)
        if not 0 <= node.partition_id < expected:
            log(WARNING, "node %s claims partition %s outside 0..%s: ignored",
                node.node_id, node.partition_id, expected - 1)
        elif holder is not None and node.partition_id not in replaceable:
            log(WARNING, "node %s claims partition %s already held by node %s: ignored",
                node.node_id, node.partition_id, holder.node_id)
        else:
            by_partition[node.partition_id] = node
            placed.append(node.partition_id)
    return placed


def identify(grid: Grid, expected: int, timeout: float, poll_interval: float) -> dict[int, Node]:
    """Partition id -> node, for every node that answered with a valid, unclaimed partition."""
    started = time.monotonic()
    node_ids = wait_for_nodes(grid, expected, timeout)
    by_partition: dict[int, Node] = {}
    merge(by_partition, ask_identity(grid, node_ids, timeout, poll_interval), expected)
    roles = sorted({n.role for n in by_partition.values()})
    log(INFO, "identified %d of %d partitions in %.1fs (roles: %s)", len(by_partition), expected,
        time.monotonic() - started,
        ", ".join(f"{r}={sum(n.role == r for n in by_partition.values())}" for r in roles))
    missing = [p for p in range(expected) if p not in by_partition]
    if missing and by_partition:
        log(WARNING, "no node for partitions %s after %.0fs (server.identify_timeout_s): the run "
            "goes on with %d of %d; a node that connects later is identified before a round",
            missing, timeout, len(by_partition), expected)
    return by_partition


class Membership:
    """The partition -> node map of a run, and which partitions' nodes went silent.

    A node that does not answer a round leaves sampling until it answers again (:meth:`refresh`
    asks it before every round while it is connected) or a node claims its partition once it
    no longer answers, e.g. a restarted SuperNode."""

    def __init__(self, grid: Grid, nodes: dict[int, Node], expected: int, timeout: float,
                 poll_interval: float, sizes: list[int] | None = None,
                 ping_timeout: float = 10.0) -> None:
        # ``sizes``: every partition's size as the server computed it (its own partition
        # cache); they replace what nodes claim, for the FedAvg weights, the attackers' hints
        # and the num-examples bound (server.num_examples).
        self.sizes = sizes
        self.grid, self.expected = grid, expected
        self.nodes = {p: self._known(n) for p, n in nodes.items()}
        self.timeout, self.poll_interval = timeout, poll_interval
        self.ping_timeout = min(ping_timeout, timeout)  # how long refresh waits for answers
        self.silent: set[int] = set()  # partitions whose node missed a round
        self.asked: set[int] = {n.node_id for n in nodes.values()}

    def _known(self, node: Node) -> Node:
        p = node.partition_id
        if self.sizes is None or not 0 <= p < len(self.sizes):
            return node
        if node.num_examples != self.sizes[p]:
            log(WARNING, "partition %d's node %d claims %s examples; the partition holds %d",
                p, node.node_id, node.num_examples, self.sizes[p])
        return dataclasses.replace(node, num_examples=self.sizes[p])

    def partition_of(self, node_id: int) -> int | None:
        return next((p for p, n in self.nodes.items() if n.node_id == node_id), None)

    def reported(self, role: str) -> list[int]:
        """The partitions whose nodes said they play ``role``, sorted."""
        return sorted(p for p, n in self.nodes.items() if n.role == role)

    def live(self) -> dict[int, Node]:
        return {p: n for p, n in self.nodes.items() if p not in self.silent}

    def mark_silent(self, node_ids: list[int]) -> None:
        for node_id in node_ids:
            if (p := self.partition_of(node_id)) is not None:
                self.silent.add(p)

    def refresh(self) -> None:
        """Before a round: identify nodes that connected since the last call (new or restarted
        SuperNodes) and ask the silent partitions' nodes that are still connected whether they
        are alive. A node that answers is back in sampling (it was late, not dead) and keeps
        its partition; a silent partition passes to a newcomer claiming it only when its node
        did not answer now."""
        connected = set(self.grid.get_node_ids())
        new = sorted(n for n in connected if n not in self.asked)
        waking = {self.nodes[p].node_id: p for p in self.silent
                  if self.nodes[p].node_id in connected}
        if not new and not waking:
            return
        self.asked |= set(new)
        answers = ask_identity(self.grid, new + sorted(waking), self.ping_timeout,
                               self.poll_interval)
        for node in answers:
            p = waking.get(node.node_id)
            if p is not None and node.partition_id == p:
                self.silent.discard(p)
                log(INFO, "partition %d's node %d answers again: back in sampling", p,
                    node.node_id)
        found = [self._known(n) for n in answers if n.node_id not in waking]
        for p in merge(self.nodes, found, self.expected, replaceable=self.silent):
            self.silent.discard(p)
            log(INFO, "partition %d is served by node %d", p, self.nodes[p].node_id)
