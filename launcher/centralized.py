"""``federation=centralized``: one model trained on the whole (possibly poisoned) training set,
no Flower involved: the single-model setting of papers like ABL. It reuses the federation's
data cache, model, central evaluator and results writer, so a centralized run writes the same
results contract with one row per epoch (``round`` = ``epoch``).

With ``client_defense=abl`` epochs 1..T_te train on the LGA loss, the lowest-loss p of the
training set is isolated after epoch T_te, and GGA trains the remaining epochs; otherwise
every epoch is plain cross-entropy SGD.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_train, prepare
from flbackdoor.models import build_model
from flbackdoor.rng import stream
from flbackdoor.training import Normalizer, as_tensors, pick_device, train

log = logging.getLogger("flbackdoor")


def run_centralized(cfg: ExperimentConfig, run_dir: Path) -> dict:
    from attacker.poisoning import backdoor_test_set, poison_train_set
    from defenses import abl
    from flbackdoor.evaluation import CentralEvaluator
    from flbackdoor.results import ResultsWriter

    started = time.monotonic()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(cfg.client.num_threads, 1))
    device = pick_device(cfg.device)
    cache = prepare(cfg)
    x, y, poisoned = poison_train_set(cfg, *load_train(cache))
    backdoor = backdoor_test_set(cfg, cache)
    cap = cfg.server.eval_max_samples
    if backdoor is not None and 0 < cap < len(backdoor[1]):  # as the main test set is capped
        keep = np.sort(stream("eval_subset", cfg.seed).choice(len(backdoor[1]), cap, replace=False))
        backdoor = (backdoor[0][keep], backdoor[1][keep])
    evaluator = CentralEvaluator(cfg, cache, backdoor)
    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
    normalize = Normalizer(d, device)
    xt, yt = as_tensors(x, y, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    one_epoch = dataclasses.replace(cfg.client, epochs=1)
    cd = cfg.client_defense
    use_abl = cd.enabled
    isolated: torch.Tensor | None = None
    isolation: dict = {}
    writer = ResultsWriter(run_dir, cfg)
    initial = evaluator(model.state_dict())
    log.info("centralized: %d training examples, %d poisoned (%s), ABL %s", len(y), len(poisoned),
             cfg.poisoning.kind, "on" if use_abl else "off")
    for epoch in range(1, cfg.num_rounds + 1):
        t0 = time.monotonic()
        if not use_abl:
            stage, result = "train", train(model, xt, yt, one_epoch, normalize, generator)
        elif epoch <= cd.lga_rounds:
            stage = "lga"
            result = abl.train_lga(model, xt, yt, cfg.client, cd.gamma, normalize, 1, generator,
                                   per_example=cd.lga_sign == "example")
        else:
            if isolated is None:
                losses = abl.per_example_losses(model, xt, yt, normalize)
                isolated = abl.isolate(losses, cd.isolation_fraction)
                isolation = isolation_summary(isolated.cpu().numpy(), poisoned, losses.cpu(),
                                              epoch - 1)
                log.info("isolated %d examples after epoch %d, precision %.3f", len(isolated),
                         epoch - 1, isolation["isolation_precision"])
            stage = "gga"
            lr = cd.unlearning_lr
            result = abl.train_gga(model, xt, yt, isolated, cfg.client, lr, normalize, 1, generator,
                                   cd.ascent)
        row = {"round": epoch, "epoch": epoch, "phase": "train", "stage": stage,
               **evaluator(model.state_dict()), "train_loss": result.loss,
               "num_poisoned": len(poisoned)}
        if isolation:
            row.update(isolated_count=isolation["isolated_count"],
                       isolation_precision=isolation["isolation_precision"])
        row.update(epoch_time_s=time.monotonic() - t0, wall_time_s=time.monotonic() - started)
        writer.write_round(row)
        log.info("[%s epoch %d/%d] main_accuracy=%.4f%s train_loss=%.4f time=%.1fs", stage, epoch,
                 cfg.num_rounds, row["main_accuracy"],
                 f" backdoor_accuracy={row['backdoor_accuracy']:.4f}"
                 if "backdoor_accuracy" in row else "", result.loss, row["epoch_time_s"])
    return writer.finish(time.monotonic() - started, initial=initial, num_poisoned=len(poisoned),
                         isolation=isolation)


def isolation_summary(isolated: np.ndarray, poisoned: np.ndarray, losses: torch.Tensor,
                      after_epoch: int) -> dict:
    """How well isolation did, against the known poisoned set: precision, and the mean loss of
    the poisoned and clean examples at that moment (the separation LGA created)."""
    from defenses.abl import isolation_precision

    is_poisoned = np.zeros(len(losses), bool)
    is_poisoned[poisoned] = True
    clean = losses[torch.from_numpy(~is_poisoned)]
    bad = losses[torch.from_numpy(is_poisoned)]
    return {
        "after_epoch": after_epoch,
        "isolated_count": int(len(isolated)),
        "isolated_poisoned": int(np.isin(isolated, poisoned).sum()),
        "isolation_precision": isolation_precision(isolated, poisoned),
        "mean_loss_poisoned": float(bad.mean()) if len(bad) else None,
        "mean_loss_clean": float(clean.mean()) if len(clean) else None,
    }
