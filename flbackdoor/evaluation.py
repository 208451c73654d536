"""Central evaluation of the global model every round: main task on the held-out test set,
backdoor task on the attack's backdoor test set (share classified as the target label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_test
from flbackdoor.models import build_model
from flbackdoor.rng import stream
from flbackdoor.training import Normalizer, as_tensors, evaluate, pick_device


class CentralEvaluator:
    def __init__(self, cfg: ExperimentConfig, cache: Path,
                 backdoor: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.device = pick_device(cfg.device)
        x, y = load_test(cache)
        if cfg.server.eval_max_samples and cfg.server.eval_max_samples < len(y):
            keep = np.sort(stream("eval_subset", cfg.seed).choice(
                len(y), cfg.server.eval_max_samples, replace=False))
            x, y = x[keep], y[keep]
        self.x, self.y = as_tensors(x, y, self.device)
        self.backdoor = as_tensors(*backdoor, self.device) if backdoor else None
        d = cfg.dataset
        self.model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(self.device)
        self.normalize = Normalizer(d, self.device)
        self.batch_size = cfg.server.eval_batch_size

    def set_backdoor(self, backdoor: tuple[np.ndarray, np.ndarray]) -> None:
        """Measure the backdoor on this set from now on (an adaptive trigger's latest report)."""
        self.backdoor = as_tensors(*backdoor, self.device)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.load_state_dict(state)
        acc, loss = evaluate(self.model, self.x, self.y, self.normalize, self.batch_size)
        out = {"main_accuracy": acc, "main_loss": loss}
        if self.backdoor is not None and len(self.backdoor[1]):
            out["backdoor_accuracy"], _ = evaluate(self.model, *self.backdoor, self.normalize,
                                                   self.batch_size)
        return out
