"""The ClientApp: ``train`` (local SGD from the global model) and ``query.identify``.

Each handler is thin glue: records in, plain PyTorch (flbackdoor.training) in between,
records out. Imports stay light: in deployment every message starts a new process.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import identity, local_paths, partition_data
from flbackdoor.config import from_run_config
from flbackdoor.models import build_model
from flbackdoor.training import Normalizer, as_tensors, pick_device, train as local_train

app = ClientApp()


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    cfg, _ = from_run_config(context.run_config)
    node = identity(context, cfg)
    info = ConfigRecord({"partition-id": node.partition_id, "role": node.role})
    return Message(RecordDict({"node": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, _ = from_run_config(context.run_config)
    node = identity(context, cfg)
    server_round = int(msg.content["config"]["server-round"])
    torch.set_num_threads(cfg.client.num_threads)
    # Reproducible local randomness (batch order, dropout) per (seed, round, partition).
    seed = hash((cfg.seed, server_round, node.partition_id)) % (2**31)
    torch.manual_seed(seed)
    device = pick_device(cfg.device)

    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = as_tensors(*partition_data(local_paths(context, cfg), node.partition_id), device)
    result = local_train(model, x, y, cfg.client, Normalizer(d, device),
                         torch.Generator().manual_seed(seed))

    metrics = MetricRecord({"num-examples": result.num_examples, "train_loss": result.loss})
    arrays = ArrayRecord({k: v.cpu() for k, v in model.state_dict().items()})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
