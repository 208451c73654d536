"""One training round, from plan to metrics row: refresh who is alive, sample (schedule), one
train wave, validate every reply, compute the updates once, aggregate (the run's defense),
score the defense as a detector, refresh an adaptive trigger (server/trigger_report.py),
evaluate centrally.

A node that does not answer in ``server.round_timeout_s`` costs its round only its reply: the
round aggregates the replies that came (at least ``server.min_replies``) and the silent node's
partition is not sampled again until a node (re)claims it (``server/nodes.py``)."""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from defenses import detection
from defenses.base import Defense, Updates
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig
from flbackdoor.evaluation import CentralEvaluator
from flbackdoor.models import SERVER_BUFFERS
from flbackdoor.updates import add, difference, global_norm
from server.isolation import isolation_metrics
from server.messaging import Wave, send_and_collect, wave_window
from server.nodes import Membership
from server.sampling import plan_round
from server.trigger_report import TriggerReport
from server.update_stats import update_statistics
from server.validation import check_reply, expected_from


def train_messages(rnd: int, arrays: ArrayRecord, node_ids: list[int]) -> list[Message]:
    """The round's train message to each node: the global model and the round number."""
    record = RecordDict({P.ARRAYS: arrays, P.CONFIG: ConfigRecord({P.SERVER_ROUND: rnd})})
    return [Message(record, dst_node_id=n, message_type=P.TRAIN) for n in node_ids]


def with_attacker_hints(messages: list[Message], attackers: set[int], hints: dict,
                        arrays: dict[str, ArrayRecord] | None = None) -> list[Message]:
    """The testbed plays the colluding attackers' side channel: the malicious nodes of a round
    learn the round's total example count and how many of them were sampled (Sun et al.'s
    boost needs both), and get the ``arrays`` their attack reads (the last global update, the
    round's benign updates). Benign nodes' messages are left untouched."""
    out = []
    for msg in messages:
        if msg.metadata.dst_node_id in attackers:
            content = RecordDict({**dict(msg.content.items()), **(arrays or {})})
            content[P.CONFIG] = ConfigRecord({**msg.content[P.CONFIG], **hints})
            msg = Message(content, dst_node_id=msg.metadata.dst_node_id,
                          message_type=msg.metadata.message_type)
        out.append(msg)
    return out


def benign_update_records(deltas: list[dict]) -> dict[str, ArrayRecord]:
    """The round's benign updates as the side channel's array records, in partition order."""
    return {f"{P.ATTACK_BENIGN_UPDATE}{i}": ArrayRecord({k: v.float() for k, v in d.items()})
            for i, d in enumerate(deltas)}


def keep_server_buffers(state: dict, global_state: dict) -> dict:
    """``state`` with the server's own buffers (the pruning mask) as they were: no reply, noise
    or robust aggregator may move them."""
    return {**state, **{k: global_state[k] for k in SERVER_BUFFERS if k in global_state}}


def reply_arrays(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


def reply_metrics(msg: Message) -> dict:
    return dict(next(iter(msg.content.metric_records.values())))


def example_weights(policy: str, reported: list[float], known: list[int]) -> list[float]:
    """The replies' FedAvg weights n_k under ``server.num_examples`` (``known``: the partition
    sizes the server computed; ``cap``: the reported counts, at most those; ``trust``: the
    reported counts)."""
    if policy == "trust":
        return list(reported)
    if policy == "cap":
        return [min(r, float(k)) for r, k in zip(reported, known)]
    return [float(k) for k in known]


def mean_train_loss(metrics: list[dict], weights: list[float]) -> float | None:
    """The n_k-weighted mean of the replies' train losses."""
    total = sum(weights)
    if not metrics or total <= 0:
        return None
    return sum(float(m[P.TRAIN_LOSS]) * w for m, w in zip(metrics, weights)) / total


def detection_columns(defense: Defense, flagged: frozenset[int], malicious: set[int],
                      reporting: list[int]) -> dict:
    """The row's detection figures; a defense that flags nobody by design says so."""
    if not defense.detects:
        return {"flagged": [], "detector": False, "detection_precision": None,
                "detection_recall": None, "detection_fpr": None}
    s = detection.score(flagged, malicious, reporting)
    return {"flagged": sorted(flagged), "detector": True,
            **{f"detection_{k}": v for k, v in s.items()}}


class RoundRunner:
    def __init__(self, grid: Grid, cfg: ExperimentConfig, members: Membership,
                 evaluator: CentralEvaluator, trigger_report: TriggerReport | None = None) -> None:
        self.grid, self.cfg, self.members, self.evaluator = grid, cfg, members, evaluator
        # An adaptive trigger's report to the measurement (server/trigger_report.py).
        self.trigger_report = trigger_report
        self.started = time.monotonic()
        self.window = wave_window(cfg)
        # Rows score the defense as a detector only where there are attackers to detect.
        self.scores_detection = cfg.attack.num_malicious > 0
        # w_t - w_{t-1}, for attacks that read it (not kept in checkpoints: after a resume the
        # first round's attackers get none).
        self.global_update: dict | None = None
        # The round the experiment's first round follows (server/app.py sets it once pretraining
        # or a resume has decided it): attack.stop_round counts from there.
        self.experiment_start = 0

    def send(self, messages: list) -> Wave:
        """One wave to the nodes: the round's training, or a defense's queries."""
        s = self.cfg.server
        return send_and_collect(self.grid, messages, s.round_timeout_s, s.poll_interval_s,
                                self.window)

    def _validated(self, rnd: int, wave: Wave, expected) -> tuple[list, list[dict]]:
        """The wave's replies that pass validation as (partition, message), and the rejected
        ones with their reasons; silent nodes are marked."""
        s, nodes = self.cfg.server, self.members.nodes
        self.members.mark_silent(wave.missing)
        replies, rejected = [], []
        for msg in wave.ok:
            part = self.members.partition_of(msg.metadata.src_node_id)
            bound = nodes[part].num_examples if s.num_examples == "known" else None
            reason = check_reply(msg.content, expected, bound)
            if reason is None:
                replies.append((part, msg))
            else:
                rejected.append({"partition": part, "reason": reason})
                log(WARNING, "round %d: update of partition %s rejected: %s", rnd, part, reason)
        return replies, rejected

    def _train_wave(self, rnd: int, messages: list[Message], plan: list[int],
                    attackers: list[int], expected, global_state: dict
                    ) -> tuple[Wave, list, list[dict]]:
        """Send the round's train messages and validate the replies. The round's attackers get
        the side channel (``with_attacker_hints``); an omniscient attack's attackers are asked
        once the benign replies are in, with those validated updates."""
        if not attackers:
            wave = self.send(messages)
            return (wave, *self._validated(rnd, wave, expected))
        nodes = self.members.nodes
        log(INFO, "round %d: malicious partitions sampled: %s", rnd, attackers)
        attacker_ids = {nodes[p].node_id for p in attackers}
        hints = {P.ATTACK_ROUND_EXAMPLES: sum(nodes[p].num_examples for p in plan),
                 P.ATTACK_NUM_ATTACKERS: len(attackers)}
        records = {}
        if self.cfg.attack.reads_global_update and self.global_update is not None:
            records[P.ATTACK_GLOBAL_UPDATE] = ArrayRecord(self.global_update)
        if not self.cfg.attack.omniscient:
            wave = self.send(with_attacker_hints(messages, attacker_ids, hints, records))
            return (wave, *self._validated(rnd, wave, expected))
        benign = self.send([m for m in messages if m.metadata.dst_node_id not in attacker_ids])
        replies, rejected = self._validated(rnd, benign, expected)
        records.update(benign_update_records(
            [difference(reply_arrays(m).to_torch_state_dict(), global_state)
             for _, m in sorted(replies, key=lambda pm: pm[0])]))
        rest = [m for m in messages if m.metadata.dst_node_id in attacker_ids]
        malicious = self.send(with_attacker_hints(rest, attacker_ids, hints, records))
        more, refused = self._validated(rnd, malicious, expected)
        wave = Wave(benign.replies + malicious.replies, benign.missing + malicious.missing,
                    {**benign.errors, **malicious.errors})
        return wave, replies + more, rejected + refused

    def _report_trigger(self, rnd: int, attackers: list[int]) -> dict:
        """After an attack round, the adaptive trigger of its lowest live attacker, for the
        measurement only; {} when there is none to ask."""
        live = [p for p in attackers if p not in self.members.silent]
        if self.trigger_report is None or not live:
            return {}
        node_id = self.members.nodes[live[0]].node_id
        return {"trigger_report": self.trigger_report.refresh(self.send, rnd, live[0], node_id)}

    def _plan(self, rnd: int, attacks_on: bool) -> tuple[list[int], list[int]]:
        """This round's partitions among the live nodes, and the live malicious partitions."""
        self.members.refresh()
        live = self.members.live()
        benign = sorted(p for p, n in live.items() if n.role == "benign")
        malicious = sorted(p for p, n in live.items() if n.role == "malicious")
        plan = plan_round(rnd, benign, malicious, self.cfg.clients_per_round, self.cfg.attack,
                          self.cfg.seed, attacks_on, self.experiment_start)
        return plan, malicious

    def run(self, rnd: int, arrays: ArrayRecord, defense: Defense, phase: str = "train",
            attacks_on: bool = True) -> tuple[ArrayRecord, dict]:
        s = self.cfg.server
        nodes = self.members.nodes
        t0 = time.monotonic()
        plan, malicious = self._plan(rnd, attacks_on)
        deadline = t0 + s.round_timeout_s
        while not plan and time.monotonic() < deadline:  # every node silent: wait for returns
            time.sleep(1.0)
            plan, malicious = self._plan(rnd, attacks_on)
        if not plan:
            log(WARNING, "round %d: no live node to train with", rnd)
        attackers = [p for p in plan if p in malicious]
        messages = train_messages(rnd, arrays, [nodes[p].node_id for p in plan])
        global_state = arrays.to_torch_state_dict()
        expected = expected_from(arrays, s.max_examples, s.max_update_bytes, s.max_update_norm)
        sent = time.monotonic()
        wave, replies, rejected = self._train_wave(rnd, messages, plan, attackers, expected,
                                                   global_state)
        wave_time = time.monotonic() - sent
        # Partition order, so the float sums do not depend on which reply came first.
        replies.sort(key=lambda pm: pm[0])
        partitions = [p for p, _ in replies]
        deltas = [difference(reply_arrays(m).to_torch_state_dict(), global_state)
                  for _, m in replies]
        metrics = [reply_metrics(m) for _, m in replies]
        from_attacker = [p in malicious for p in partitions]
        stats = update_statistics([global_norm(d) for d in deltas], from_attacker)

        weights = example_weights(s.num_examples, [float(m[P.NUM_EXAMPLES]) for m in metrics],
                                  [nodes[p].num_examples for p in partitions])
        outcome = None
        if len(replies) >= s.min_replies:
            outcome = defense.aggregate(Updates(deltas, weights, partitions, rnd, len(messages),
                                                global_state))
        else:
            log(INFO, "round %d: %d replies < server.min_replies=%d, model kept",
                rnd, len(replies), s.min_replies)
        if outcome is not None and outcome.delta is not None:
            new_state = keep_server_buffers(add(global_state, outcome.delta, s.lr), global_state)
            arrays = ArrayRecord(new_state)
            self.global_update = difference(new_state, global_state)
        trigger = self._report_trigger(rnd, attackers)  # before the backdoor is measured
        row = {
            "round": rnd,
            "phase": phase,
            **self.evaluator(arrays.to_torch_state_dict()),
            "num_clients": len(replies),
            "num_sampled": len(messages),
            "num_malicious": sum(from_attacker),
            "missing_nodes": len(wave.missing) + len(wave.errors),
            "rejected_updates": rejected,
            "train_loss": mean_train_loss(metrics, weights) if outcome is not None else None,
            "fraction_clipped": None,
            **stats,
            **(outcome.stats if outcome is not None else {}),
            **isolation_metrics(metrics),
            **trigger,
            "wave_time_s": wave_time,  # push to last reply: the clients' work plus Flower's
            "round_time_s": time.monotonic() - t0,
            "wall_time_s": time.monotonic() - self.started,
        }
        if self.scores_detection and outcome is not None:
            row.update(detection_columns(defense, outcome.flagged,
                                         {p for p, bad in zip(partitions, from_attacker) if bad},
                                         partitions))
        return arrays, row


def eta_s(elapsed_s: float, done: int, left: int) -> float:
    """The rounds left at the mean pace of the rounds done so far."""
    return elapsed_s / done * left if done else 0.0


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(row: dict, last_round: int, eta: float | None = None) -> str:
    line = (f"[{row['phase']} round {row['round']}/{last_round}] "
            f"main_accuracy={row['main_accuracy']:.4f} main_loss={row['main_loss']:.4f}")
    if "backdoor_accuracy" in row:
        line += f" backdoor_accuracy={row['backdoor_accuracy']:.4f}"
    line += (f" clients={row['num_clients']}/{row['num_sampled']} "
             f"malicious={row['num_malicious']} time={row['round_time_s']:.1f}s")
    return line if eta is None else f"{line} eta={format_duration(eta)}"
