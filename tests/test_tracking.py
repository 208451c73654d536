"""Trackers: the rows and the config reach TensorBoard and MLflow as the results files get
them; a tracker that fails costs the tracking only; a missing package fails before the run."""

from __future__ import annotations

import pytest

from flbackdoor.config import ExperimentConfig, TrackingConfig, validate
from flbackdoor.errors import ConfigError
from flbackdoor.results import ResultsWriter
from flbackdoor.tracking import flat_params, scalars

ROWS = [{"round": r, "phase": "train", "main_accuracy": 0.5 + r / 10, "main_loss": 1.0 / r,
         "flagged": [1],
         "detector": True, "rejected_updates": []} for r in (1, 2, 3)]


def _run(tmp_path, tracking: TrackingConfig) -> ResultsWriter:
    writer = ResultsWriter(tmp_path / "run", ExperimentConfig(tracking=tracking))
    for row in ROWS:
        writer.write_round(row)
    writer.finish(1.0)
    return writer


def test_numbers_go_out_per_phase_and_the_config_flat():
    assert scalars({"round": 2, "phase": "prune", "main_accuracy": 0.9, "flagged": [1],
                    "detector": True, "num_clients": 3}) == {
        "prune/main_accuracy": 0.9, "prune/num_clients": 3.0}
    assert flat_params({"attack": {"name": "boosted", "x": [1, 2]}, "seed": 0}) == {
        "attack.name": "boosted", "attack.x": "[1, 2]", "seed": "0"}


def test_tensorboard_gets_every_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tmp_path, TrackingConfig(name="tensorboard"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    got = [(e.step, round(e.value, 4)) for e in events.Scalars("train/main_accuracy")]
    assert got == [(1, 0.6), (2, 0.7), (3, 0.8)]


def test_mlflow_gets_the_params_every_round_and_the_final_figures(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # no tracking server here
    uri = f"file:{tmp_path / 'mlruns'}"
    _run(tmp_path, TrackingConfig(name="mlflow", uri=uri, experiment="t"))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.data.params["attack.name"] == "none" and run.info.run_name == "run"
    history = client.get_metric_history(run.info.run_id, "train/main_accuracy")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert run.data.metrics["final/main_accuracy"] == pytest.approx(0.8)
    assert mlflow.active_run() is None


def test_a_failing_tracker_costs_the_tracking_only(tmp_path, monkeypatch):
    # An MLflow server that is not there: the results files are written all the same.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    writer = _run(tmp_path, TrackingConfig(name="mlflow", uri="http://127.0.0.1:9/"))
    assert writer.tracker.tracker is None
    assert (tmp_path / "run" / "summary.json").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_unknown_tracker_and_missing_package_fail_in_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="tracking"):
        validate(ExperimentConfig(tracking=TrackingConfig(name="wandb_typo")))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the tensorboard package"):
        validate(ExperimentConfig(tracking=TrackingConfig(name="tensorboard")))
