"""Central evaluation of the global model on the server's held-out test set, every round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_test
from flbackdoor.models import build_model
from flbackdoor.training import Normalizer, as_tensors, evaluate, pick_device


class CentralEvaluator:
    def __init__(self, cfg: ExperimentConfig, cache: Path) -> None:
        self.device = pick_device(cfg.device)
        x, y = load_test(cache)
        if cfg.server.eval_max_samples and cfg.server.eval_max_samples < len(y):
            keep = np.sort(np.random.default_rng(cfg.seed).choice(
                len(y), cfg.server.eval_max_samples, replace=False))
            x, y = x[keep], y[keep]
        self.x, self.y = as_tensors(x, y, self.device)
        d = cfg.dataset
        self.model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(self.device)
        self.normalize = Normalizer(d, self.device)
        self.batch_size = cfg.server.eval_batch_size

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.load_state_dict(state)
        acc, loss = evaluate(self.model, self.x, self.y, self.normalize, self.batch_size)
        return {"main_accuracy": acc, "main_loss": loss}
