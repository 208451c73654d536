"""The client's side of the pruning rounds (Wu et al.): two query handlers, registered on the
ClientApp as ``query.prune_activations`` and ``query.prune_evaluate``.

- ``prune_activations``: the mean activation of each channel of the global model's last conv
  layer on this node's data, answered as a ranking (ranking vote) or a 0/1 keep mask at the
  server's pruning rate (majority vote). Never the activations themselves (the paper's privacy
  and robustness argument).
- ``prune_evaluate``: this node's accuracy on its data of candidate models the server describes
  (the first n channels of an order pruned, or extreme weights zeroed at each delta), for the
  stopping rule when the server has no validation set.

A malicious node's answer goes through ``attacker.lying`` when ``pruning.lie`` says so.
"""

from __future__ import annotations

from logging import INFO

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from client.node import identity, local_paths, partition_data
from defenses.pruning import candidate_changes, channel_activations, keep_votes, ranking
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, from_run_config
from flbackdoor.models import build_model
from flbackdoor.training import Normalizer, as_tensors, evaluate, pick_device


def _setup(msg: Message, context: Context):
    cfg = local_paths(context, from_run_config(context.run_config)[0])
    node = identity(context, cfg)
    torch.set_num_threads(cfg.client.num_threads)
    device = pick_device(cfg.device)
    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
    model.load_state_dict(msg.content[P.ARRAYS].to_torch_state_dict())
    local = partition_data(cfg, node.partition_id)
    lying = node.role == "malicious" and cfg.pruning.lie != "none"
    return cfg, node, model, local, device, lying


def activations(msg: Message, context: Context) -> Message:
    cfg, node, model, local, device, lying = _setup(msg, context)
    config = msg.content[P.CONFIG]
    x, _ = _sample(cfg, *local, node.partition_id)
    normalize = Normalizer(cfg.dataset, device)
    acts = channel_activations(model, normalize(as_tensors(x, local[1][:0], device)[0]))
    if lying:
        log(INFO, "partition %d (malicious) answers the pruning vote with pruning.lie=%s",
            node.partition_id, cfg.pruning.lie)
        acts = _lie_activations(cfg, node.partition_id, model, local, acts, normalize, device)
    if str(config["mode"]) == "ranking":
        values = ranking(acts)
    else:
        values = keep_votes(acts, float(config["rate"]))
    vote = ConfigRecord({P.VOTE_VALUES: [int(v) for v in values.tolist()],
                         P.NUM_EXAMPLES: len(x)})
    return Message(RecordDict({P.VOTE: vote}), reply_to=msg)


def evaluate_candidates(msg: Message, context: Context) -> Message:
    cfg, node, model, local, device, lying = _setup(msg, context)
    config = msg.content[P.CONFIG]
    x, y = as_tensors(*local, device)
    normalize = Normalizer(cfg.dataset, device)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    accuracies = []
    for candidate in candidate_changes(config, base["channel_mask"]):
        model.load_state_dict(base)
        candidate(model)
        accuracies.append(evaluate(model, x, y, normalize, cfg.server.eval_batch_size)[0])
    if lying:
        from attacker.lying import lie_accuracies

        accuracies = lie_accuracies(accuracies, cfg.pruning.lie)
    report = MetricRecord({P.REPORT_ACCURACIES: [float(a) for a in accuracies],
                           P.NUM_EXAMPLES: len(y)})
    return Message(RecordDict({P.REPORT: report}), reply_to=msg)


def _sample(cfg: ExperimentConfig, x, y, partition_id: int):
    n = cfg.pruning.activation_samples
    if not n or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(
        cfg.seed * 1009 + partition_id))[:n].sort().values.numpy()
    return x[keep], y[keep]


def _lie_activations(cfg, partition_id, model, local, honest, normalize, device):
    """The malicious path: the triggered images come from the attacker's backdoor task."""
    from attacker.lying import ACTIVATION_LIES, lie_activations

    if cfg.pruning.lie not in ACTIVATION_LIES:
        return honest
    triggered = None
    if cfg.pruning.lie == "keep_backdoor":
        from flbackdoor.roles import roles_for
        from attacker.tasks import build_task
        from flbackdoor.data.cache import prepare

        folder = prepare(cfg)
        roles = roles_for(cfg, folder)
        index = roles.attacker_index(partition_id) if partition_id in roles.malicious else 0
        task = build_task(cfg, folder, roles)
        if task is not None:
            px, _ = task.poison(*local, index)
            triggered = channel_activations(model, normalize(as_tensors(px, local[1][:0],
                                                                         device)[0]))
        else:  # no backdoor to protect: nothing to lie about
            triggered = honest
    return lie_activations(honest, triggered, cfg.pruning.lie)
