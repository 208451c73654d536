"""The results contract, written by the ServerApp into the run's output folder.

- ``metrics.jsonl``: one JSON object per evaluated round (``round``, ``phase``,
  ``main_accuracy``, ``main_loss``, ``num_clients``, ``wall_time_s``, ...), flushed each round.
- ``summary.json``: ``final`` (the last row), ``initial``, ``rounds``, ``wall_time_s`` and the
  resolved ``config``; written to a temp file and renamed, so it is never torn.
- ``curves.png``: main accuracy and loss per round.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flbackdoor.config import ExperimentConfig


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ResultsWriter:
    def __init__(self, out_dir: Path, cfg: ExperimentConfig) -> None:
        self.out_dir = out_dir
        self.cfg = cfg
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / "metrics.jsonl"
        self.rows: list[dict] = []

    def write_round(self, row: dict) -> None:
        self.rows.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, wall_time_s: float, **extra: Any) -> dict:
        summary = {
            "final": self.rows[-1] if self.rows else {},
            "rounds": len([r for r in self.rows if r.get("phase") == "train"]),
            "wall_time_s": wall_time_s,
            "config": asdict(self.cfg),
            **extra,
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        plot_curves(self.rows, self.out_dir / "curves.png")
        return summary


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    acc_ax.plot(rounds, [r["main_accuracy"] for r in rows], ":", marker="o", label="main task")
    acc_ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="Accuracy")
    acc_ax.legend(loc="lower right")
    loss_ax.plot(rounds, [r["main_loss"] for r in rows], marker="o")
    loss_ax.set(xlabel="round", ylabel="cross-entropy", title="Main-task loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_summary(out_dir: Path) -> dict:
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}
