"""Hydra callback: after every job of a multirun, (re)write ``sweep_summary.csv`` in the sweep
folder, one row per job with its overrides and final figures (so a killed sweep keeps its rows)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        row: dict[str, Any] = {"job": int(job.name), "overrides": " ".join(overrides)}
        summary_file = job / "summary.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
            row.update(status="done", rounds=summary.get("rounds"),
                       wall_time_s=round(summary.get("wall_time_s", 0.0), 2))
            for key, value in summary.get("final", {}).items():
                if isinstance(value, (int, float)) and key != "round":
                    row[f"final_{key}"] = value
        else:
            row["status"] = "failed"
        rows.append(row)
    return rows


def write_sweep_summary(sweep_dir: Path) -> Path:
    rows = sweep_rows(sweep_dir)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path = sweep_dir / "sweep_summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            write_sweep_summary(Path(HydraConfig.get().sweep.dir))
