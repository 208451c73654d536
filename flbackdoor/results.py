"""The results contract, written by the ServerApp into the run's output folder.

- ``metrics.jsonl``: one JSON object per evaluated round (``round``, ``phase``,
  ``main_accuracy``, ``main_loss``, ``num_clients``, ``wall_time_s``, ...), rewritten through a
  temp file and a rename after each round.
- ``summary.json``: ``final`` (the last row), ``initial``, ``rounds``, ``wall_time_s`` and the
  resolved ``config``; written to a temp file and renamed, so it is never torn.
  With an attack: ``final.backdoor_accuracy`` and ``mean_backdoor_accuracy`` (the cumulative mean
  of the backdoor accuracy over the rounds, Sun et al.'s green line, at the last round), and the
  backdoor's ``lifespan`` with its ``durability`` block (:func:`backdoor_lifespan`).
- ``curves.png``: in the paper's style: main task dotted, backdoor task solid, its cumulative
  mean green; main-task loss beside it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flbackdoor.config import ExperimentConfig
from flbackdoor.tracking import SafeTracker


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) as None: JSON has no such numbers, and
    a reader of metrics.jsonl must never meet Python's ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(payload: Any, **kwargs: Any) -> str:
    return json.dumps(json_safe(payload), allow_nan=False, sort_keys=True, **kwargs)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, dumps(payload, indent=2))


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultsWriter:
    """``keep_until``: resuming, the rows up to that round are kept (and nothing after it, so
    no round is ever written twice); otherwise the folder's metrics start empty."""

    def __init__(self, out_dir: Path, cfg: ExperimentConfig, keep_until: int | None = None) -> None:
        self.out_dir = out_dir
        self.cfg = cfg
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / "metrics.jsonl"
        old = read_metrics(self.metrics_path) if keep_until is not None else []
        self.rows: list[dict] = [r for r in old if r["round"] <= (keep_until or 0)]
        self._flush()
        self.tracker = SafeTracker(cfg.tracking, out_dir)
        self.tracker.log_config(asdict(cfg))

    def _flush(self) -> None:
        # The whole file each round, via rename: a killed run never leaves a torn line.
        write_text_atomic(self.metrics_path,
                          "".join(dumps(r) + "\n" for r in self.rows))

    def write_round(self, row: dict) -> None:
        self.rows.append(row)
        self._flush()
        self.tracker.log_round(row)

    def finish(self, wall_time_s: float, **extra: Any) -> dict:
        # Over the training rounds: the defense's phases have their own blocks (``phases``).
        backdoor = [r["backdoor_accuracy"] for r in self.rows
                    if "backdoor_accuracy" in r and r.get("phase", "train") == "train"]
        if backdoor:
            extra["mean_backdoor_accuracy"] = sum(backdoor) / len(backdoor)
        durability = backdoor_lifespan(self.rows)
        if durability is not None:
            extra["lifespan"], extra["durability"] = durability["lifespan"], durability
        summary = {
            "final": self.rows[-1] if self.rows else {},
            "rounds": len([r for r in self.rows if r.get("phase") == "train"]),
            "wall_time_s": wall_time_s,
            "config": asdict(self.cfg),
            **extra,
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        plot_curves(self.rows, self.out_dir / "curves.png")
        self.tracker.close(summary)
        return summary


LIFESPAN_THRESHOLD = 0.5


def backdoor_lifespan(rows: list[dict], threshold: float = LIFESPAN_THRESHOLD) -> dict | None:
    """The backdoor's durability as Neurotoxin (Zhang et al., ICML 2022, section 4) and
    Chameleon (Dai & Li, ICML 2023) measure it, from the training rounds' metrics rows.

    With L the last round an attacker's update was aggregated (``num_malicious`` > 0), the
    lifespan is the number of rounds after L until the backdoor accuracy first falls below
    ``threshold``: k when round L + k is the first round from L on below it (0: it was already
    below when the attack stopped, after having been above). ``lifespan`` is None, and
    ``status`` says why, when it stayed at or above the threshold in every round of the run
    after L (``never_fell``; ``rounds_after_attack`` says how many rounds that was) or was
    below it in every round up to L (``never_rose``: no backdoor to outlive the attack).
    None for a run without a backdoor task or without an attack round."""
    train = [r for r in rows if r.get("phase", "train") == "train"
             and r.get("backdoor_accuracy") is not None]
    attacked = [r["round"] for r in train if r.get("num_malicious", 0) > 0]
    if not attacked:
        return None
    last = max(attacked)
    out = {"last_attack_round": last, "threshold": threshold,
           "rounds_after_attack": sum(r["round"] > last for r in train)}
    if all(r["backdoor_accuracy"] < threshold for r in train if r["round"] <= last):
        return {**out, "lifespan": None, "status": "never_rose"}
    below = [r["round"] for r in train if r["round"] >= last and r["backdoor_accuracy"] < threshold]
    if not below:
        return {**out, "lifespan": None, "status": "never_fell"}
    return {**out, "lifespan": min(below) - last, "status": "fell_below"}


def cumulative_mean(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values, 1):
        total += v
        out.append(total / i)
    return out


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    acc_ax.plot(rounds, [r["main_accuracy"] for r in rows], ":", marker=".", color="tab:blue",
                label="main task")
    if rows and "backdoor_accuracy" in rows[0]:
        backdoor = [r["backdoor_accuracy"] for r in rows]
        acc_ax.plot(rounds, backdoor, "-", color="tab:red", label="backdoor task")
        acc_ax.plot(rounds, cumulative_mean(backdoor), "-", color="tab:green",
                    label="backdoor, cumulative mean")
    acc_ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
    acc_ax.legend(loc="lower right")
    loss_ax.plot(rounds, [r["main_loss"] for r in rows], ":", marker=".", color="tab:blue")
    loss_ax.set(xlabel="round", ylabel="cross-entropy", title="Main-task loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_summary(out_dir: Path) -> dict:
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}
