"""The ClientApp: ``train`` (local SGD from the global model, or the attack's reply on a
malicious node), ``query.identify``, ``query.trigger_report``, and the pruning queries of
``client/pruning.py``.

Each handler is thin glue: records in, plain PyTorch in between, records out. Imports stay
light: in deployment every message starts a new process.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import pruning
from client.abl import abl_train, isolation_report, runs_abl
from client.node import identity, local_paths, partition_data, training_data
from flbackdoor import protocol as P
from flbackdoor.config import from_run_config
from flbackdoor.models import build_model
from flbackdoor.registries import ATTACKS
from flbackdoor.rng import client_seed
from flbackdoor.training import Normalizer, as_tensors, pick_device, train as local_train

app = ClientApp()
# Wu et al.'s pruning rounds (client/pruning.py).
app.query(P.PRUNE_ACTIVATIONS_ACTION)(pruning.activations)
app.query(P.PRUNE_EVALUATE_ACTION)(pruning.evaluate_candidates)


@app.query(P.IDENTIFY_ACTION)
def identify(msg: Message, context: Context) -> Message:
    cfg = local_paths(context, from_run_config(context.run_config)[0])
    node = identity(context, cfg)
    n = len(partition_data(cfg, node.partition_id)[1])
    info = ConfigRecord({P.PARTITION_ID: node.partition_id, P.ROLE: node.role,
                         P.NUM_EXAMPLES: n})
    return Message(RecordDict({P.NODE: info}), reply_to=msg)


@app.query(P.TRIGGER_REPORT_ACTION)
def trigger_report(msg: Message, context: Context) -> Message:
    """The trigger a malicious node's adaptive attack last trained with (kept in the node's
    state by the attack), for the server's measurement (server/trigger_report.py); any other
    node, or one that has not attacked yet, answers with no record."""
    cfg = local_paths(context, from_run_config(context.run_config)[0])
    content = RecordDict()
    if (cfg.attack.adaptive_trigger and identity(context, cfg).role == "malicious"
            and P.TRIGGER in context.state.array_records):
        content[P.TRIGGER] = context.state[P.TRIGGER]
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = local_paths(context, from_run_config(context.run_config)[0])
    node = identity(context, cfg)
    config = msg.content[P.CONFIG]
    server_round = int(config[P.SERVER_ROUND])
    torch.set_num_threads(cfg.client.num_threads)
    # Reproducible local randomness (batch order, dropout) per (seed, round, partition).
    seed = client_seed(cfg.seed, server_round, node.partition_id)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = pick_device(cfg.device)

    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
    global_state = msg.content[P.ARRAYS].to_torch_state_dict()
    model.load_state_dict(global_state)
    local = partition_data(cfg, node.partition_id)
    defense_metrics: dict[str, int] = {}  # what a client-side defense reports (ABL isolation)

    def honest():
        """Local training on this node's data, poisoned where an outsider got to it
        (attacker/poisoning.py), with the client-side defense where one runs."""
        x, y, poisoned = training_data(cfg, node.partition_id, *local)
        x, y = as_tensors(x, y, device)
        if runs_abl(cfg, poisoned):
            result, report = abl_train(model, x, y, poisoned, cfg, server_round, context.state,
                                       Normalizer(d, device), generator)
            defense_metrics.update(report)
        else:
            result = local_train(model, x, y, cfg.client, Normalizer(d, device), generator)
            if cfg.client_defense.enabled:
                defense_metrics.update(isolation_report([], poisoned))
        return model.state_dict(), result

    if node.role == "malicious":
        reply = _attack_reply(cfg, node.partition_id, server_round, model, global_state, local,
                              msg.content, device, generator, honest, context.state)
        if reply.content is not None:
            return Message(reply.content, reply_to=msg)
        arrays, n, loss = reply.arrays, reply.num_examples, reply.loss
    else:
        state, result = honest()
        arrays = ArrayRecord({k: v.detach().cpu() for k, v in state.items()})
        n, loss = result.num_examples, result.loss
    metrics = MetricRecord({P.NUM_EXAMPLES: n, P.TRAIN_LOSS: loss, **defense_metrics})
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: metrics}), reply_to=msg)


def _attack_reply(cfg, partition_id, server_round, model, global_state, local, content, device,
                  generator, honest, state):
    """The malicious path: the attack's code is imported only on malicious nodes. ``content``
    is the train message's, with the side channel's hints and arrays (server/rounds.py);
    ``state`` the node's own for the run."""
    from attacker.base import TrainJob
    from flbackdoor.data.cache import prepare

    arrays = content.array_records
    benign = sorted((k for k in arrays if k.startswith(P.ATTACK_BENIGN_UPDATE)),
                    key=lambda k: int(k[len(P.ATTACK_BENIGN_UPDATE):]))
    global_update = arrays.get(P.ATTACK_GLOBAL_UPDATE)
    job = TrainJob(cfg, partition_id, server_round, model, global_state, local,
                   dict(content[P.CONFIG]), prepare(cfg), device, generator, honest,
                   [arrays[k].to_torch_state_dict() for k in benign],
                   None if global_update is None else global_update.to_torch_state_dict(),
                   state)
    return ATTACKS[cfg.attack.name](cfg).reply(job)
