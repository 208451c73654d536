"""Saved global models: a run's ``checkpoint.pt``, and clean pretrained models cached in
``data.cache_dir`` so every attack on the same clean setting starts from the same model."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import cache_key
from flbackdoor.models import with_channel_mask
from flbackdoor.updates import StateDict


def save(path: Path, state: StateDict, server_round: int, **extra: object) -> None:
    """Written to a temp file and renamed: a killed run leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": state, "round": server_round, **extra}, tmp)
    os.replace(tmp, path)


def load(path: Path) -> tuple[StateDict, int]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return with_channel_mask(blob["model"]), int(blob["round"])


def load_extra(path: Path) -> dict:
    """Everything a checkpoint holds besides the model and its round (e.g. RNG states)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in blob.items() if k not in ("model", "round")}


def pretrained_path(cfg: ExperimentConfig) -> Path:
    """Keyed by everything that shapes clean training, and nothing about attacks/defenses."""
    clean = {
        "data": cache_key(cfg), "model": asdict(cfg.model), "client": asdict(cfg.client),
        "server_lr": cfg.server.lr, "clients_per_round": cfg.clients_per_round,
        "rounds": cfg.pretrain_rounds, "checkpoint": cfg.checkpoint,
    }
    digest = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.data.cache_dir) / "pretrained" / f"{cfg.model.name}-{digest}.pt"
