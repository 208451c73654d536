"""One training round, from plan to metrics row: sample (schedule), one train wave, update
statistics, aggregate (strategy), evaluate centrally."""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flbackdoor.config import ExperimentConfig
from flbackdoor.updates import difference, global_norm
from server.evaluation import CentralEvaluator
from server.messaging import send_and_collect
from server.registry import Node
from server.sampling import plan_round
from server.strategies import SelectedNodes, reply_arrays
from server.update_stats import update_statistics


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


class RoundRunner:
    def __init__(self, grid: Grid, cfg: ExperimentConfig, nodes: dict[int, Node],
                 evaluator: CentralEvaluator, clip_bound: float | None) -> None:
        self.grid, self.cfg, self.nodes, self.evaluator = grid, cfg, nodes, evaluator
        self.clip_bound = clip_bound
        self.partition_of = {n.node_id: p for p, n in nodes.items()}
        self.benign = sorted(p for p, n in nodes.items() if n.role == "benign")
        self.malicious = sorted(p for p, n in nodes.items() if n.role == "malicious")
        self.started = time.monotonic()

    def run(self, rnd: int, arrays: ArrayRecord, strategy: Strategy, phase: str = "train",
            attacks_on: bool = True) -> tuple[ArrayRecord, dict]:
        cfg, s = self.cfg, self.cfg.server
        t0 = time.monotonic()
        plan = plan_round(rnd, self.benign, self.malicious, cfg.clients_per_round, cfg.attack,
                          cfg.seed, attacks_on)
        attackers = [p for p in plan if p in self.malicious]
        messages = list(strategy.configure_train(
            rnd, arrays, ConfigRecord(), SelectedNodes([self.nodes[p].node_id for p in plan])))
        if attackers:
            log(INFO, "round %d: malicious partitions sampled: %s", rnd, attackers)
            hints = {"attack-round-examples": sum(self.nodes[p].num_examples for p in plan),
                     "attack-num-attackers": len(attackers)}
            messages = with_attacker_hints(
                messages, {self.nodes[p].node_id for p in attackers}, hints)
        wave = send_and_collect(self.grid, messages, s.round_timeout_s, s.poll_interval_s)
        # Partition order, so the float sums do not depend on which reply came first.
        replies = sorted(wave.ok, key=lambda m: self.partition_of.get(m.metadata.src_node_id, -1))
        global_state = arrays.to_torch_state_dict()
        norms = [global_norm(difference(reply_arrays(m).to_torch_state_dict(), global_state))
                 for m in replies]
        from_attacker = [self.partition_of.get(m.metadata.src_node_id) in self.malicious
                         for m in replies]
        stats = update_statistics(norms, from_attacker, self.clip_bound)

        new_arrays, train_metrics = (None, None)
        if len(replies) >= s.min_replies:
            new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        else:
            log(INFO, "round %d: %d replies < server.min_replies=%d, model kept",
                rnd, len(replies), s.min_replies)
        arrays = new_arrays if new_arrays is not None else arrays
        row = {
            "round": rnd,
            "phase": phase,
            **self.evaluator(arrays.to_torch_state_dict()),
            "num_clients": len(replies),
            "num_sampled": len(messages),
            "num_malicious": sum(from_attacker),
            "missing_nodes": len(wave.missing) + len(wave.errors),
            "train_loss": float(train_metrics["train_loss"])
            if train_metrics and "train_loss" in train_metrics else None,
            **stats,
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
