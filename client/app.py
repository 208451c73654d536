"""The ClientApp: ``train`` (local SGD from the global model, or the attacker's crafted update
on a malicious node), ``query.identify``, and the pruning queries of ``client/pruning.py``.

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
from flbackdoor.config import from_run_config
from flbackdoor.models import build_model
from flbackdoor.training import Normalizer, as_tensors, pick_device, train as local_train

app = ClientApp()
# Wu et al.'s pruning rounds (client/pruning.py).
app.query("prune_activations")(pruning.activations)
app.query("prune_evaluate")(pruning.evaluate_candidates)


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    cfg = local_paths(context, from_run_config(context.run_config)[0])
    node = identity(context, cfg)
    n = len(partition_data(cfg, node.partition_id)[1])
    info = ConfigRecord({"partition-id": node.partition_id, "role": node.role, "num-examples": n})
    return Message(RecordDict({"node": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = local_paths(context, from_run_config(context.run_config)[0])
    node = identity(context, cfg)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    torch.set_num_threads(cfg.client.num_threads)
    # Reproducible local randomness (batch order, dropout) per (seed, round, partition).
    seed = hash((cfg.seed, server_round, node.partition_id)) % (2**31)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = pick_device(cfg.device)

    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
    global_state = msg.content["arrays"].to_torch_state_dict()
    model.load_state_dict(global_state)
    local = partition_data(cfg, node.partition_id)
    defense_metrics: dict[str, int] = {}  # what a client-side defense reports (ABL isolation)
    attacking = node.role == "malicious" and cfg.attack.name not in ("none", "malformed")
    if attacking:
        state, result = _attack(cfg, node.partition_id, model, global_state, local, dict(config),
                                device, generator)
    else:
        # An honest node's data, poisoned where an outsider got to it (attacker/poisoning.py).
        x, y, poisoned = training_data(cfg, node.partition_id, *local)
        x, y = as_tensors(x, y, device)
        if runs_abl(cfg, poisoned):
            result, defense_metrics = abl_train(model, x, y, poisoned, cfg, server_round,
                                                context.state, Normalizer(d, device), generator)
        else:
            result = local_train(model, x, y, cfg.client, Normalizer(d, device), generator)
            if cfg.client_defense.name == "abl":
                defense_metrics = isolation_report([], poisoned)
        state = model.state_dict()

    arrays = ArrayRecord({k: v.detach().cpu() for k, v in state.items()})
    n: float = result.num_examples
    if node.role == "malicious" and cfg.attack.name == "malformed":
        arrays, n = _malform(arrays, n, cfg, server_round)
    metrics = MetricRecord({"num-examples": n, "train_loss": result.loss, **defense_metrics})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def _malform(arrays: ArrayRecord, n: int, cfg, server_round: int) -> tuple[ArrayRecord, float]:
    from flwr.app import Array

    from attacker.malformed import kind_for_round, malform

    kind = kind_for_round(cfg.attack.malformed_kind, server_round)
    bad, n = malform({k: v.numpy() for k, v in arrays.items()}, n, kind,
                     cfg.attack.oversized_bytes)
    return ArrayRecord({k: Array(v) for k, v in bad.items()}), n


def _attack(cfg, partition_id, model, global_state, local, hints, device, generator):
    """The malicious path: imported only on malicious nodes."""
    from attacker.crafting import attack_boost, attacker_train_data, craft_update
    from attacker.roles import roles_for
    from attacker.tasks import build_task
    from flbackdoor.data.cache import prepare

    folder = prepare(cfg)
    roles = roles_for(cfg, folder)
    index = roles.attacker_index(partition_id) if partition_id in roles.malicious else 0
    poison = build_task(cfg, folder, roles).poison(*local, index)
    n = len(local[1])
    d_trn = attacker_train_data(local, folder, cfg, exclude=roles.targets)
    state, result = craft_update(model, global_state, d_trn, poison, cfg,
                                 attack_boost(cfg, hints, n), device, generator)
    # The attacker reports its honest-looking D_trn size, the n_k its boost was computed for.
    result.num_examples = n
    return {k: v.to(global_state[k].device) for k, v in state.items()}, result
