"""Flower's FedAvg strategy, with the server learning rate of Sun et al. and seeded sampling.

Only the two hooks change: ``configure_train`` sends to the nodes our sampler picked, and
``aggregate_train`` averages the updates delta_k = w_k - w_t (weights n_k) and steps by eta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from server.aggregation import deltas_from, fedavg


class ServerLRFedAvg(FedAvg):
    def __init__(self, server_lr: float, select_nodes: Callable[[int], list[int]]) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
        self.server_lr = server_lr
        self.select_nodes = select_nodes
        self._current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.select_nodes(server_round), MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid or self._current is None:
            return None, None
        global_state = self._current.to_torch_state_dict()
        contents = [m.content for m in valid]
        deltas = [
            deltas_from(global_state, next(iter(c.array_records.values())).to_torch_state_dict())
            for c in contents
        ]
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key])
                   for c in contents]
        new_state = fedavg(global_state, deltas, weights, self.server_lr)
        return ArrayRecord(new_state), aggregate_metricrecords(contents, self.weighted_by_key)
