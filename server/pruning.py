"""Wu et al.'s defense after training, as federated rounds the server orchestrates:

1. prune: a ``query.prune_activations`` wave to every live node (ranking or keep votes on the
   last conv layer's channels), aggregated into a pruning order; the server prunes in that order
   while accuracy holds, measured on its validation set or reported by the clients
   (``query.prune_evaluate``); the pruned channels become the model's ``channel_mask``.
2. adjust: zero the last conv layer's weights outside mu +- delta * sigma (delta fixed or
   searched from large to small until accuracy drops).
3. finetune: ``pruning.finetune_rounds`` ordinary training rounds on the pruned model (attackers
   included; ``RoundRunner`` keeps the server's mask through every aggregation), then adjust
   again.

Each step writes a metrics row (``phase`` prune / adjust / finetune) with main and backdoor
accuracy, ``neurons_pruned`` and ``weights_zeroed``; :meth:`PruningDefense.run` returns the
summary's per-phase blocks. The math is in ``defenses.pruning``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from defenses.pruning import (
    adjust_extreme_weights,
    aggregate_rankings,
    aggregate_votes,
    candidate_changes,
    prune_mask,
    pruning_levels,
    stop_index,
)
from defenses.base import Defense
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_train
from flbackdoor.models import build_model
from flbackdoor.rng import stream
from flbackdoor.training import Normalizer, as_tensors, evaluate, pick_device
from flbackdoor.evaluation import CentralEvaluator
from flbackdoor.results import ResultsWriter
from server.rounds import RoundRunner, progress_line

BLOCK_KEYS = ("round", "main_accuracy", "backdoor_accuracy", "neurons_pruned", "weights_zeroed")


def phase_block(row: dict) -> dict:
    """What summary.json keeps of a phase: the paper's table columns."""
    return {k: row[k] for k in BLOCK_KEYS if k in row}


def valid_vote(values: object, num_channels: int, mode: str) -> bool:
    """A ranking must be a permutation of 0..C-1; keep votes must be C zeros and ones."""
    if not isinstance(values, list) or len(values) != num_channels:
        return False
    if mode == "ranking":
        return sorted(values) == list(range(num_channels))
    return all(v in (0, 1) for v in values)


def aggregate_curves(curves: list[list[float]], weights: list[float], how: str) -> list[float]:
    """One accuracy per candidate from the clients' reports: the median (one liar cannot move
    it) or the example-weighted mean."""
    if how == "median":
        return [statistics.median(col) for col in zip(*curves)]
    total = sum(weights)
    return [sum(w * c for w, c in zip(weights, col)) / total for col in zip(*curves)]


class PruningDefense:
    def __init__(self, cfg: ExperimentConfig, runner: RoundRunner, evaluator: CentralEvaluator,
                 cache, writer: ResultsWriter) -> None:
        self.cfg, self.runner = cfg, runner
        self.evaluator, self.writer = evaluator, writer
        self.p = cfg.pruning
        self.device = pick_device(cfg.device)
        d = cfg.dataset
        self.model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(self.device)
        self.normalize = Normalizer(d, self.device)
        self.validation = None
        if self.p.stop == "server_validation":
            # The server's own small validation set: a seeded sample of the training images.
            # It never overlaps the test set the reported accuracies come from; the server does
            # not learn which client holds these images.
            x, y = load_train(cache)
            keep = np.sort(stream("pruning_validation", cfg.seed).choice(
                len(y), min(self.p.validation_size, len(y)), replace=False))
            self.validation = as_tensors(np.asarray(x[keep]), np.asarray(y[keep]), self.device)

    # -- one wave of queries to every live node ------------------------------------------------
    def _ask(self, message_type: str, arrays: ArrayRecord, config: dict) -> list[Message]:
        live = [n for _, n in sorted(self.runner.members.live().items())]
        messages = [Message(RecordDict({P.ARRAYS: arrays, P.CONFIG: ConfigRecord(config)}),
                            dst_node_id=n.node_id, message_type=message_type) for n in live]
        wave = self.runner.send(messages)
        # Partition order: the aggregate does not depend on which reply came first.
        return sorted(wave.ok,
                      key=lambda m: self.runner.members.partition_of(m.metadata.src_node_id))

    # -- the steps -------------------------------------------------------------------------------
    def vote(self, arrays: ArrayRecord, num_channels: int) -> tuple[list[int], int]:
        """The pruning order from the nodes' rankings or keep votes, and how many voted."""
        replies = self._ask(P.PRUNE_ACTIVATIONS, arrays, {"mode": self.p.name, "rate": self.p.rate})
        votes = []
        for msg in replies:
            values = list(msg.content[P.VOTE][P.VOTE_VALUES]) if P.VOTE in msg.content else None
            if valid_vote(values, num_channels, self.p.name):
                votes.append(torch.tensor(values))
            else:
                log(WARNING, "pruning vote of node %s is malformed: ignored",
                    msg.metadata.src_node_id)
        if not votes:
            raise RuntimeError("no valid pruning vote came back: cannot prune")
        agg = aggregate_rankings if self.p.name == "ranking" else aggregate_votes
        return agg(votes), len(votes)

    def _server_accuracy(self, state: dict, change: Callable[[torch.nn.Module], object]) -> float:
        self.model.load_state_dict(state)
        change(self.model)
        return evaluate(self.model, *self.validation, self.normalize,
                        self.cfg.server.eval_batch_size)[0]

    def _client_curve(self, arrays: ArrayRecord, spec: dict, size: int) -> list[float]:
        replies = self._ask(P.PRUNE_EVALUATE, arrays, spec)
        curves, weights = [], []
        for msg in replies:
            report = msg.content[P.REPORT] if P.REPORT in msg.content else {}
            accs = list(report.get(P.REPORT_ACCURACIES, []))
            if len(accs) == size and all(0.0 <= a <= 1.0 for a in accs):
                curves.append(accs)
                weights.append(float(report.get(P.NUM_EXAMPLES, 1)))
            else:
                log(WARNING, "accuracy report of node %s is malformed: ignored",
                    msg.metadata.src_node_id)
        if not curves:
            raise RuntimeError("no valid accuracy report came back: cannot choose a level")
        return aggregate_curves(curves, weights, self.p.report_aggregate)

    def _curve(self, arrays: ArrayRecord, spec: dict) -> list[float]:
        """Accuracies of the candidates ``spec`` describes (``candidate_changes``): reported by
        the clients, or measured on the server's validation set, lazily, up to the first drop."""
        state = arrays.to_torch_state_dict()
        changes = candidate_changes(spec, state["channel_mask"])
        if self.validation is None:
            return self._client_curve(arrays, spec, len(changes))
        curve: list[float] = []
        for change in changes:
            curve.append(self._server_accuracy(state, change))
            if stop_index(curve, self.p.max_drop) < len(curve) - 1:
                break
        return curve

    def choose_pruned(self, arrays: ArrayRecord, order: list[int]) -> tuple[int, list[float]]:
        """How many channels of ``order`` to prune, and the accuracies of the tested levels."""
        levels = pruning_levels(len(order), self.p.step)
        curve = self._curve(arrays, {"kind": "prune", "order": order, "levels": levels})
        return levels[stop_index(curve, self.p.max_drop)], curve

    def choose_delta(self, arrays: ArrayRecord) -> tuple[float | None, list[float]]:
        """Delta: fixed, or the smallest of ``delta_grid`` (large to small) before accuracy
        drops; None when even the largest drops it (no adjustment)."""
        if not self.p.delta_search:
            return self.p.delta, []
        grid = list(self.p.delta_grid)
        curve = self._curve(arrays, {"kind": "adjust", "deltas": grid})
        idx = stop_index(curve, self.p.max_drop)
        return (grid[idx - 1] if idx > 0 else None), curve

    def adjust(self, arrays: ArrayRecord) -> tuple[ArrayRecord, float | None, int, list[float]]:
        delta, curve = self.choose_delta(arrays)
        if delta is None:
            return arrays, None, 0, curve
        self.model.load_state_dict(arrays.to_torch_state_dict())
        zeroed = adjust_extreme_weights(self.model, delta)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return ArrayRecord(state), delta, zeroed, curve

    # -- the whole defense -----------------------------------------------------------------------
    def _row(self, rnd: int, phase: str, arrays: ArrayRecord, **extra) -> dict:
        row = {"round": rnd, "phase": phase, **self.evaluator(arrays.to_torch_state_dict()),
               **extra, "wall_time_s": time.monotonic() - self.runner.started}
        self.writer.write_round(row)
        log(INFO, "[%s] %s", phase, {k: v for k, v in row.items()
                                     if k in BLOCK_KEYS + ("delta", "num_voters")})
        return row

    def run(self, arrays: ArrayRecord, rnd: int, defense: Defense
            ) -> tuple[ArrayRecord, dict, dict]:
        """Prune, adjust, fine-tune, adjust; returns the final model, the summary's phase
        blocks and what the checkpoint keeps about the defense."""
        num_channels = len(arrays.to_torch_state_dict()["channel_mask"])
        order, voters, n, curve = list(range(num_channels)), 0, 0, []
        if self.p.prune_neurons:
            order, voters = self.vote(arrays, num_channels)
            n, curve = self.choose_pruned(arrays, order)
        state = arrays.to_torch_state_dict()
        mask = prune_mask(order, n, num_channels) * state["channel_mask"].cpu()
        state["channel_mask"] = mask
        arrays = ArrayRecord(state)
        phases = {"prune": phase_block(self._row(
            rnd, "prune", arrays, neurons_pruned=n, weights_zeroed=0, num_voters=voters,
            order=order, stop_curve=curve))}

        arrays, delta, zeroed, curve = self.adjust(arrays)
        phases["adjust"] = phase_block(self._row(
            rnd, "adjust", arrays, neurons_pruned=n, weights_zeroed=zeroed, delta=delta,
            stop_curve=curve))

        if self.p.finetune_rounds:
            # Ordinary rounds: RoundRunner keeps the server's buffers (the mask) through every
            # aggregation, so no reply can un-prune a channel.
            last = rnd + self.p.finetune_rounds
            for r in range(rnd + 1, last + 1):
                arrays, row = self.runner.run(r, arrays, defense, phase="finetune")
                row.update(neurons_pruned=n, weights_zeroed=0)
                self.writer.write_round(row)
                log(INFO, progress_line(row, last))
            phases["finetune"] = phase_block(row)
            arrays, delta, zeroed, curve = self.adjust(arrays)
            phases["finetune_adjust"] = phase_block(self._row(
                last, "adjust", arrays, neurons_pruned=n, weights_zeroed=zeroed, delta=delta,
                stop_curve=curve, after_finetune=True))
        saved = {"order": order, "neurons_pruned": n, "delta": delta}
        return arrays, phases, saved
