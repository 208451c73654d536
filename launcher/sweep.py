"""Hydra callback: after every job of a multirun, (re)write ``sweep_summary.csv`` in the sweep
folder, one row per job with its overrides and final figures (so a killed sweep keeps its rows)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


ERROR_FILE = "error.txt"  # a failed job's one-line reason, beside its .hydra/
# A remote job whose results the SuperLink's host holds: the folder there.
REMOTE_RESULTS_FILE = "remote_results.txt"

# What may differ between two runs of the same experiment: where the data and the processes
# were, how the run was asked for, and where its figures were also sent.
_NOT_THE_EXPERIMENT = ("data", "federation", "device", "resume", "skip_done", "tracking")


def _same(stored: dict, now: dict, defaults: dict) -> bool:
    for key in stored.keys() | now.keys():
        if key not in stored:  # an option added since the run: the same if left at its default
            if key not in defaults or defaults[key] != now[key]:
                return False
        elif key not in now:
            return False
        elif isinstance(stored[key], dict) and isinstance(now[key], dict):
            if not _same(stored[key], now[key], defaults.get(key) or {}):
                return False
        elif stored[key] != now[key]:
            return False
    return True


def same_experiment(stored: dict, now: dict, defaults: dict | None = None) -> bool:
    """Whether a run's resolved config (``asdict`` form) describes the experiment ``now``. A
    key ``now`` has and the run's config lacks (an option added to the code since) counts as
    the same where ``now`` holds its value in ``defaults``."""
    keep = lambda c: {k: v for k, v in c.items() if k not in _NOT_THE_EXPERIMENT}  # noqa: E731
    return _same(keep(stored), keep(now), defaults or {})


def finished_run(run_dir: Path, config: dict, defaults: dict | None = None) -> dict | None:
    """The summary of the finished run of experiment ``config`` in ``run_dir``, if there is one
    (a rerun of a resumable sweep keeps it instead of measuring it again); ``defaults``: the
    config's defaults, for options added since the run."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if same_experiment(summary.get("config", {}), config, defaults) else None


# Blocks of summary.json that are not figures of the run.
_NOT_FIGURES = ("config", "roles")


def summary_figures(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a run's ``summary.json``, flattened with ``_`` (``final_main_accuracy``,
    ``mean_backdoor_accuracy``, ``detection_recall``, ``pretrain_main_accuracy``,
    ``phases_prune_backdoor_accuracy``, ...); flags, strings and lists are not figures."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if not prefix and key in _NOT_FIGURES:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(summary_figures(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and name != "final_round":
            out[name] = value
    return out


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job folders: Hydra's numbered ones, or the name-based ones of a preset's
    ``hydra.sweep.subdir`` (``<defense>/<attack>``), any depth; in job order where numbered."""
    jobs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit()
                  else (1, 0, str(p.relative_to(sweep_dir))))


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job: ``done`` with its final figures (read where the run wrote them),
    ``remote`` with the folder on the SuperLink's host where they could not be read from here,
    or ``failed`` with its reason."""
    rows = []
    for job in job_dirs(sweep_dir):
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        name = str(job.relative_to(sweep_dir))
        row: dict[str, Any] = {"job": int(name) if name.isdigit() else name,
                               "overrides": " ".join(overrides)}
        remote = job / REMOTE_RESULTS_FILE
        folder = Path(remote.read_text().strip()) if remote.exists() else job
        summary_file = folder / "summary.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
            figures = summary_figures(summary)
            figures["wall_time_s"] = round(figures.get("wall_time_s", 0.0), 2)
            row.update(status="done", **figures)
        elif remote.exists():
            row["status"] = "remote"
            row["results"] = str(folder)
        else:
            row["status"] = "failed"
            error = job / ERROR_FILE
            if error.exists():
                row["error"] = error.read_text().strip()
        rows.append(row)
    return rows


def write_sweep_summary(sweep_dir: Path) -> Path:
    rows = sweep_rows(sweep_dir)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path = sweep_dir / "sweep_summary.csv"
    # Parallel launchers (joblib, submitit) end jobs at the same time in other processes: each
    # writes its own temp file and renames it, so the CSV is never torn; the last one wins and
    # holds every job that had finished by then.
    fd, tmp = tempfile.mkstemp(prefix=".sweep_summary.", suffix=".tmp", dir=sweep_dir)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value  # the job's exception (return_value would raise it)
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            (Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE).write_text(line + "\n")
        write_sweep_summary(Path(HydraConfig.get().sweep.dir))
