"""Experiment trackers: the per-round metrics rows and the resolved config, handed to a tracker
the field already uses (``tracking=tensorboard`` or ``tracking=mlflow``; off by default). The
results contract (``metrics.jsonl``, ``summary.json``) is written either way; a tracker is a
second view of the same rows, written by the ServerApp as each round ends.

A row's numbers go out as ``<phase>/<key>`` (``train/main_accuracy``, ``prune/backdoor_accuracy``)
at step ``round``; lists, flags and strings stay in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from logging import WARNING
from pathlib import Path

from flwr.common.logger import log

from flbackdoor.config import TrackingConfig
from flbackdoor.registries import TRACKERS

TENSORBOARD_DIR = "tensorboard"  # in the run's output folder


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers as ``<phase>/<key>`` (the round is the step, not a scalar)."""
    phase = row.get("phase", "train")
    return {f"{phase}/{k}": float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"}


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys (``attack.num_malicious``), values as strings."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


class Tracker:
    """No tracker: every call does nothing."""

    requires = ""  # the module the tracker needs (an optional dependency, the [track] extra)

    def __init__(self, cfg: TrackingConfig, out_dir: Path, run_name: str) -> None:
        self.cfg, self.out_dir, self.run_name = cfg, out_dir, run_name

    def log_config(self, config: dict) -> None: ...

    def log_round(self, row: dict) -> None: ...

    def close(self, summary: dict | None = None) -> None: ...


TRACKERS.register("none")(Tracker)


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """``<run>/tensorboard`` (or ``tracking.uri``): ``tensorboard --logdir <run or sweep>``."""

    requires = "tensorboard"

    def __init__(self, cfg: TrackingConfig, out_dir: Path, run_name: str) -> None:
        super().__init__(cfg, out_dir, run_name)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=cfg.uri or str(out_dir / TENSORBOARD_DIR))

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log_round(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, row["round"])
        self.writer.flush()

    def close(self, summary: dict | None = None) -> None:
        self.writer.close()


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """One MLflow run per experiment in ``tracking.experiment``, at ``tracking.uri`` (a
    tracking server, a database; empty: MLflow's own default or ``MLFLOW_TRACKING_URI``):
    the config as params, the rows as metrics, ``summary.json``'s numbers at the end."""

    requires = "mlflow"

    def __init__(self, cfg: TrackingConfig, out_dir: Path, run_name: str) -> None:
        super().__init__(cfg, out_dir, run_name)
        import mlflow

        self.mlflow = mlflow
        if cfg.uri:
            mlflow.set_tracking_uri(cfg.uri)
        mlflow.set_experiment(cfg.experiment)
        self.run = mlflow.start_run(run_name=run_name)

    def log_config(self, config: dict) -> None:
        self.mlflow.log_params(flat_params(config))

    def log_round(self, row: dict) -> None:
        self.mlflow.log_metrics(scalars(row), step=row["round"])

    def close(self, summary: dict | None = None) -> None:
        if summary is not None:
            final = {f"final/{k}": float(v) for k, v in summary.get("final", {}).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.mlflow.log_metrics(final)
        self.mlflow.end_run()


class SafeTracker:
    """A tracker whose failure (a tracking server gone, a full disk) costs the tracking only:
    logged once, then off; the results files and the run go on."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path) -> None:
        self.tracker: Tracker | None = None
        self._call(lambda: setattr(self, "tracker", TRACKERS[cfg.name](cfg, out_dir,
                                                                        out_dir.name)))

    def _call(self, fn) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - any tracker failure is the tracker's only
            log(WARNING, "tracking off for the rest of the run: %s: %s",
                type(err).__name__, err)
            self.tracker = None

    def log_config(self, config: dict) -> None:
        if self.tracker:
            self._call(lambda: self.tracker.log_config(config))

    def log_round(self, row: dict) -> None:
        if self.tracker:
            self._call(lambda: self.tracker.log_round(row))

    def close(self, summary: dict | None = None) -> None:
        if self.tracker:
            self._call(lambda: self.tracker.close(summary))
