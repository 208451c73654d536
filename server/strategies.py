"""Strategies: Flower's, with our sampling and the server learning rate; defenses plug in here.

Every strategy is a ``flwr.serverapp.strategy.Strategy``; the round loop calls its two hooks.
``configure_train`` gets a grid that shows only this round's planned nodes, so Flower's own
sampling (fraction 1.0) sends to exactly the nodes our schedule chose. Sun et al.'s defenses are
pure functions on the updates (``defenses/``) inside :class:`ServerLRFedAvg`; Flower's robust
strategies run as they are, wrapped by :class:`WithServerLR` to step by eta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from defenses.clipping import clipped_mean
from defenses.weak_dp import noisy_clipped_mean
from flbackdoor.config import ExperimentConfig
from flbackdoor.updates import StateDict, add, difference
from server.aggregation import weighted_mean

Aggregator = Callable[[list[StateDict], list[float]], StateDict]

# Every node we hand a strategy should train: our schedule already did the sampling.
_ALL = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
            min_evaluate_nodes=0, min_available_nodes=1)


class SelectedNodes:
    """The part of a Grid that strategies sample from, showing only this round's nodes."""

    def __init__(self, node_ids: list[int]) -> None:
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


def reply_arrays(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


class ServerLRFedAvg(FedAvg):
    """FedAvg on updates Delta_k = w_k - w_t: w_{t+1} = w_t + eta * aggregate(Delta, n)."""

    def __init__(self, server_lr: float, aggregate: Aggregator = weighted_mean) -> None:
        super().__init__(**_ALL)
        self.server_lr = server_lr
        self.aggregate = aggregate
        self._current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid or self._current is None:
            return None, None
        global_state = self._current.to_torch_state_dict()
        deltas = [difference(reply_arrays(m).to_torch_state_dict(), global_state) for m in valid]
        contents = [m.content for m in valid]
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key])
                   for c in contents]
        new_state = add(global_state, self.aggregate(deltas, weights), self.server_lr)
        return ArrayRecord(new_state), aggregate_metricrecords(contents, self.weighted_by_key)


class WithServerLR(Strategy):
    """A Flower strategy whose aggregate w' becomes w_t + eta * (w' - w_t)."""

    def __init__(self, inner: Strategy, server_lr: float) -> None:
        self.inner = inner
        self.server_lr = server_lr
        self._current: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._current = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None or self.server_lr == 1.0 or self._current is None:
            return arrays, metrics
        base = self._current.to_torch_state_dict()
        step = difference(arrays.to_torch_state_dict(), base)
        return ArrayRecord(add(base, step, self.server_lr)), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        self.inner.summary()


def build_strategy(cfg: ExperimentConfig, generator: torch.Generator,
                   defended: bool = True) -> Strategy:
    """The strategy for ``cfg.defense`` (plain FedAvg when ``defended`` is false)."""
    d, eta = cfg.defense, cfg.server.lr
    name = d.name if defended else "none"
    if name == "none":
        return ServerLRFedAvg(eta)
    if name == "norm_clipping":
        return ServerLRFedAvg(eta, lambda deltas, n: clipped_mean(deltas, n, d.norm_bound))
    if name == "weak_dp":
        return ServerLRFedAvg(eta, lambda deltas, n: noisy_clipped_mean(
            deltas, d.norm_bound, d.noise_std, cfg.clients_per_round, generator))
    inner: Strategy
    if name == "krum":
        inner = Krum(num_malicious_nodes=d.num_malicious, **_ALL)
    elif name == "multikrum":
        inner = MultiKrum(num_malicious_nodes=d.num_malicious,
                          num_nodes_to_select=d.num_nodes_to_select, **_ALL)
    elif name == "bulyan":
        inner = Bulyan(num_malicious_nodes=d.num_malicious, **_ALL)
    elif name == "fedmedian":
        inner = FedMedian(**_ALL)
    elif name == "fedtrimmedavg":
        inner = FedTrimmedAvg(beta=d.trim_fraction, **_ALL)
    elif name == "flower_dp_fixed":
        inner = DifferentialPrivacyServerSideFixedClipping(
            FedAvg(**_ALL), noise_multiplier=d.noise_multiplier, clipping_norm=d.norm_bound,
            num_sampled_clients=cfg.clients_per_round)
    else:
        raise ValueError(f"unknown defense {name!r}")
    return WithServerLR(inner, eta)
