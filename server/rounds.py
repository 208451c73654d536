"""One training round, from plan to metrics row: refresh who is alive, sample (schedule), one
train wave, validate every reply, update statistics, aggregate (strategy), evaluate centrally.

A node that does not answer in ``server.round_timeout_s`` costs its round only its reply: the
round aggregates the replies that came (at least ``server.min_replies``) and the silent node's
partition is not sampled again until a node (re)claims it, e.g. a restarted SuperNode."""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flbackdoor.config import ExperimentConfig
from flbackdoor.models import SERVER_BUFFERS
from flbackdoor.updates import difference, global_norm
from server.evaluation import CentralEvaluator
from server.isolation import isolation_metrics
from server.messaging import Wave, send_and_collect, wave_window
from server.registry import Node, ask_identity, merge
from server.sampling import plan_round
from server.strategies import SelectedNodes, reply_arrays
from server.update_stats import update_statistics
from server.validation import check_reply, expected_from


def with_attacker_hints(messages: list[Message], attackers: set[int], hints: dict) -> list[Message]:
    """The testbed plays the colluding attackers' side channel: the malicious nodes of a round
    learn the round's total example count and how many of them were sampled (Sun et al.'s
    boost needs both). Benign nodes' messages are left untouched."""
    out = []
    for msg in messages:
        if msg.metadata.dst_node_id in attackers:
            content = RecordDict(dict(msg.content.items()))
            content["config"] = ConfigRecord({**msg.content["config"], **hints})
            msg = Message(content, dst_node_id=msg.metadata.dst_node_id,
                          message_type=msg.metadata.message_type)
        out.append(msg)
    return out


def keep_server_buffers(arrays: ArrayRecord, global_state: dict) -> ArrayRecord:
    """``arrays`` with the server's own buffers (the pruning mask) as they were: no reply, noise
    or robust aggregator may move them."""
    kept = {k: global_state[k] for k in SERVER_BUFFERS if k in global_state}
    if not kept:
        return arrays
    return ArrayRecord({**arrays.to_torch_state_dict(), **kept})


class RoundRunner:
    def __init__(self, grid: Grid, cfg: ExperimentConfig, nodes: dict[int, Node],
                 evaluator: CentralEvaluator, clip_bound: float | None) -> None:
        self.grid, self.cfg, self.nodes, self.evaluator = grid, cfg, nodes, evaluator
        self.clip_bound = clip_bound
        self.silent: set[int] = set()  # partitions whose node missed a round
        self.asked: set[int] = {n.node_id for n in nodes.values()}
        self.started = time.monotonic()
        self.window = wave_window(cfg)

    def send(self, messages: list) -> Wave:
        """One wave to the nodes: the round's training, or a defense's queries."""
        s = self.cfg.server
        return send_and_collect(self.grid, messages, s.round_timeout_s, s.poll_interval_s,
                                self.window)

    def partition_of(self, node_id: int) -> int | None:
        return next((p for p, n in self.nodes.items() if n.node_id == node_id), None)

    def refresh(self) -> None:
        """Identify nodes that connected since the last round (new or restarted SuperNodes)."""
        new = [n for n in self.grid.get_node_ids() if n not in self.asked]
        if not new:
            return
        self.asked |= set(new)
        s = self.cfg.server
        found = ask_identity(self.grid, new, s.round_timeout_s, s.poll_interval_s)
        for p in merge(self.nodes, found, self.cfg.num_clients, replaceable=self.silent):
            self.silent.discard(p)
            log(INFO, "partition %d is served by node %d", p, self.nodes[p].node_id)

    def _plan(self, rnd: int, attacks_on: bool) -> tuple[list[int], list[int]]:
        """This round's partitions among the live nodes, and the live malicious partitions."""
        self.refresh()
        live = {p: n for p, n in self.nodes.items() if p not in self.silent}
        benign = sorted(p for p, n in live.items() if n.role == "benign")
        malicious = sorted(p for p, n in live.items() if n.role == "malicious")
        plan = plan_round(rnd, benign, malicious, self.cfg.clients_per_round, self.cfg.attack,
                          self.cfg.seed, attacks_on)
        return plan, malicious

    def run(self, rnd: int, arrays: ArrayRecord, strategy: Strategy, phase: str = "train",
            attacks_on: bool = True) -> tuple[ArrayRecord, dict]:
        s = self.cfg.server
        t0 = time.monotonic()
        plan, malicious = self._plan(rnd, attacks_on)
        deadline = t0 + s.round_timeout_s
        while not plan and time.monotonic() < deadline:  # every node silent: wait for returns
            time.sleep(1.0)
            plan, malicious = self._plan(rnd, attacks_on)
        if not plan:
            log(WARNING, "round %d: no live node to train with", rnd)
        attackers = [p for p in plan if p in malicious]
        messages = list(strategy.configure_train(
            rnd, arrays, ConfigRecord(), SelectedNodes([self.nodes[p].node_id for p in plan])
        )) if plan else []
        if attackers:
            log(INFO, "round %d: malicious partitions sampled: %s", rnd, attackers)
            hints = {"attack-round-examples": sum(self.nodes[p].num_examples for p in plan),
                     "attack-num-attackers": len(attackers)}
            messages = with_attacker_hints(
                messages, {self.nodes[p].node_id for p in attackers}, hints)
        sent = time.monotonic()
        wave = self.send(messages)
        wave_time = time.monotonic() - sent
        for node_id in wave.missing:
            if (p := self.partition_of(node_id)) is not None:
                self.silent.add(p)
        expected = expected_from(arrays, s.max_examples, s.max_update_bytes)
        replies, rejected = [], []
        for msg in wave.ok:
            part = self.partition_of(msg.metadata.src_node_id)
            reason = check_reply(msg.content, expected)
            if reason is None:
                replies.append((part, msg))
            else:
                rejected.append({"partition": part, "reason": reason})
                log(WARNING, "round %d: update of partition %s rejected: %s", rnd, part, reason)
        # Partition order, so the float sums do not depend on which reply came first.
        replies = [m for _, m in sorted(replies, key=lambda pm: pm[0])]
        global_state = arrays.to_torch_state_dict()
        norms = [global_norm(difference(reply_arrays(m).to_torch_state_dict(), global_state))
                 for m in replies]
        from_attacker = [self.partition_of(m.metadata.src_node_id) in malicious for m in replies]
        stats = update_statistics(norms, from_attacker, self.clip_bound)

        new_arrays, train_metrics = (None, None)
        if len(replies) >= s.min_replies:
            new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        else:
            log(INFO, "round %d: %d replies < server.min_replies=%d, model kept",
                rnd, len(replies), s.min_replies)
        if new_arrays is not None:
            arrays = keep_server_buffers(new_arrays, global_state)
        row = {
            "round": rnd,
            "phase": phase,
            **self.evaluator(arrays.to_torch_state_dict()),
            "num_clients": len(replies),
            "num_sampled": len(messages),
            "num_malicious": sum(from_attacker),
            "missing_nodes": len(wave.missing) + len(wave.errors),
            "rejected_updates": rejected,
            "train_loss": float(train_metrics["train_loss"])
            if train_metrics and "train_loss" in train_metrics else None,
            **stats,
            **isolation_metrics(replies),
            "wave_time_s": wave_time,  # push to last reply: the clients' work plus Flower's
            "round_time_s": time.monotonic() - t0,
            "wall_time_s": time.monotonic() - self.started,
        }
        return arrays, row


def progress_line(row: dict, last_round: int) -> str:
    line = (f"[{row['phase']} round {row['round']}/{last_round}] "
            f"main_accuracy={row['main_accuracy']:.4f} main_loss={row['main_loss']:.4f}")
    if "backdoor_accuracy" in row:
        line += f" backdoor_accuracy={row['backdoor_accuracy']:.4f}"
    return line + (f" clients={row['num_clients']}/{row['num_sampled']} "
                   f"malicious={row['num_malicious']} time={row['round_time_s']:.1f}s")
