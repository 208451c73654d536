"""What every benchmark shares: the experiment composed exactly as ``flbackdoor`` composes it,
the bare-PyTorch floor (one round's client work in a plain loop, no Flower), real runs of
``flbackdoor`` and their metrics rows, and medians.

Figures are ratios to the floor measured in the same process, and medians over rounds or
repeats: a shared 2-core machine is too noisy for single absolute times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("FLBACKDOOR_DATA", str(REPO.parent / "shared" / "data"))

if str(REPO) not in sys.path:  # `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))

from flbackdoor.config import ExperimentConfig  # noqa: E402


def parser(doc: str) -> argparse.ArgumentParser:
    """Every benchmark's command line: ``--quick`` (the same code paths on small data, so CI
    notices when a benchmark breaks) and trailing Hydra overrides, which measure a lever
    switched off, e.g. ``server.max_in_flight=0`` or ``federation.superexec_poll_interval_s=1``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    return ap


def experiment(overrides: list[str]) -> ExperimentConfig:
    """The typed, validated experiment for these Hydra overrides (as ``flbackdoor`` builds it)."""
    from hydra import compose, initialize_config_dir

    from launcher.cli import CONF_DIR, resolve

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return resolve(compose("config", overrides=[f"data.root={DATA_ROOT}", *overrides]))


def floor_seconds(cfg: ExperimentConfig, partitions: list[int]) -> float:
    """One round's client work with no Flower: each partition loads its data and trains
    ``cfg.client.epochs`` epochs from the same starting model, one after another."""
    from flbackdoor.data.cache import load_partition, prepare
    from flbackdoor.models import build_model
    from flbackdoor.training import Normalizer, as_tensors, pick_device, train

    device = pick_device(cfg.device)
    cache = prepare(cfg)
    d = cfg.dataset
    model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    normalize = Normalizer(d, device)
    # Warm-up (first-call costs of PyTorch's kernels and thread pool), then put the model back.
    x, y = as_tensors(*load_partition(cache, partitions[0]), device)
    warm = dataclasses.replace(cfg.client, epochs=1)
    train(model, x[:warm.batch_size], y[:warm.batch_size], warm, normalize)
    t0 = time.perf_counter()
    for p in partitions:
        model.load_state_dict(start)
        x, y = as_tensors(*load_partition(cache, p), device)
        train(model, x, y, cfg.client, normalize, torch.Generator().manual_seed(p))
    return time.perf_counter() - t0


def round_partitions(cfg: ExperimentConfig, server_round: int) -> list[int]:
    """The partitions the server samples in ``server_round`` (no attacker)."""
    from server.sampling import plan_round

    return plan_round(server_round, list(range(cfg.num_clients)), [], cfg.clients_per_round,
                      cfg.attack, cfg.seed)


def run_flbackdoor(overrides: list[str], run_dir: Path, timeout: float = 3600) -> list[dict]:
    """A real ``flbackdoor`` run; its metrics rows."""
    cmd = [sys.executable, "-m", "launcher.cli", f"data.root={DATA_ROOT}", *overrides,
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"flbackdoor failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="flbackdoor-bench-"))


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    return (f"{os.cpu_count()} CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, "
            f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}")
