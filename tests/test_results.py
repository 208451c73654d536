"""The results files are strict JSON: a non-finite figure (a diverged loss) is written as null,
never as Python's NaN, which JSON readers reject."""

import json
import math

from flbackdoor.config import ExperimentConfig
from flbackdoor.results import ResultsWriter, read_metrics


def test_non_finite_figures_are_null_in_metrics_and_summary(tmp_path):
    writer = ResultsWriter(tmp_path, ExperimentConfig())
    writer.write_round({"round": 1, "phase": "train", "main_accuracy": 0.5, "main_loss": 1.0,
                        "train_loss": float("nan"), "nested": {"x": [1.0, float("inf")]}})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text, parse_constant=lambda c: math.nan)
    assert row["train_loss"] is None and row["nested"] == {"x": [1.0, None]}
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["main_accuracy"] == 0.5
    writer.finish(1.0, extra=float("-inf"))
    summary = (tmp_path / "summary.json").read_text()
    assert "Infinity" not in summary and json.loads(summary)["extra"] is None
