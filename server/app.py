"""The ServerApp: identify the nodes, then train round after round with one message wave each.

We drive the rounds ourselves instead of ``Strategy.start`` for three reasons: one wave per
round (evaluation is central, on the server, not a second wave to the clients), a short poll
loop instead of ``send_and_receive``'s 3 s sleeps, and a round that goes on with the replies
that came when a node is late or dead. The strategy's own hooks (``configure_train``,
``aggregate_train``) still do the sampling and the aggregation.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from flbackdoor.config import from_run_config
from flbackdoor.data.cache import prepare
from flbackdoor.models import build_model
from server.evaluation import CentralEvaluator
from server.messaging import send_and_collect
from server.registry import identify
from server.results import ResultsWriter
from server.sampling import sample_partitions
from server.strategy import ServerLRFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.monotonic()
    # 1. The experiment, exactly as flbackdoor resolved it.
    cfg, out_dir = from_run_config(context.run_config)
    out_dir = out_dir or Path.cwd() / "flbackdoor-results"
    torch.manual_seed(cfg.seed)

    # 2. Data (the cache exists already when flbackdoor launched us) and the initial model.
    cache = prepare(cfg)
    evaluator = CentralEvaluator(cfg, cache)
    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes)
    arrays = ArrayRecord(model.state_dict())
    initial = evaluator(model.state_dict())
    log(INFO, "initial global model: main_accuracy=%.4f", initial["main_accuracy"])

    # 3. Who is out there: partition id -> node.
    s = cfg.server
    nodes = identify(grid, cfg.num_clients, s.identify_timeout_s, s.poll_interval_s)
    if not nodes:
        raise RuntimeError("no node answered the identify query: nothing to train with")

    def select_nodes(server_round: int) -> list[int]:
        chosen = sample_partitions(list(nodes), cfg.clients_per_round, cfg.seed, server_round)
        return [nodes[p].node_id for p in chosen]

    strategy = ServerLRFedAvg(server_lr=s.lr, select_nodes=select_nodes)
    writer = ResultsWriter(out_dir, cfg)

    # 4. Rounds: one train wave, aggregate, evaluate centrally, write a row.
    for rnd in range(1, cfg.num_rounds + 1):
        t0 = time.monotonic()
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        wave = send_and_collect(grid, messages, s.round_timeout_s, s.poll_interval_s)
        # Partition order, so the float sums do not depend on which reply came first.
        part_of = {n.node_id: p for p, n in nodes.items()}
        replies = sorted(wave.ok, key=lambda m: part_of.get(m.metadata.src_node_id, -1))
        new_arrays, train_metrics = (None, None)
        if len(replies) >= s.min_replies:
            new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        else:
            log(WARNING, "round %d: %d replies < server.min_replies=%d, model kept",
                rnd, len(replies), s.min_replies)
        if new_arrays is not None:
            arrays = new_arrays
        row = {
            "round": rnd,
            "phase": "train",
            **evaluator(arrays.to_torch_state_dict()),
            "num_clients": len(replies),
            "num_sampled": len(messages),
            "missing_nodes": len(wave.missing) + len(wave.errors),
            "train_loss": float(train_metrics["train_loss"]) if train_metrics else None,
            "round_time_s": time.monotonic() - t0,
            "wall_time_s": time.monotonic() - started,
        }
        writer.write_round(row)
        log(INFO, "[round %d/%d] main_accuracy=%.4f main_loss=%.4f clients=%d/%d time=%.1fs",
            rnd, cfg.num_rounds, row["main_accuracy"], row["main_loss"], row["num_clients"],
            row["num_sampled"], row["round_time_s"])

    summary = writer.finish(time.monotonic() - started, initial=initial,
                            num_nodes=len(nodes))
    log(INFO, "done: final main_accuracy=%.4f after %d rounds in %.1fs (results in %s)",
        summary["final"]["main_accuracy"], summary["rounds"], summary["wall_time_s"], out_dir)
