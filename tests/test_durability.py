"""The backdoor's lifespan (Neurotoxin's and Chameleon's durability figure) from hand-made
metrics rows, and its place in summary.json."""

import json

import pytest

from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.results import ResultsWriter, backdoor_lifespan


def _rows(backdoor: list[float], attacked: int, first: int = 6, phase: str = "train") -> list[dict]:
    """One row per round from ``first``, attackers aggregated in the first ``attacked``."""
    return [{"round": first + i, "phase": phase, "main_accuracy": 0.9, "main_loss": 0.3,
             "backdoor_accuracy": b, "num_malicious": 2 if i < attacked else 0}
            for i, b in enumerate(backdoor)]


@pytest.mark.parametrize("backdoor, lifespan", [
    ([0.2, 0.8, 0.9, 1.0, 0.9, 0.7, 0.4, 0.3], 3),  # L = 9; 10, 11 above, 12 below
    ([0.2, 0.8, 0.9, 1.0, 0.3, 0.2], 1),  # gone in the first clean round
    ([0.9, 1.0, 0.8, 0.4, 0.2, 0.6], 0),  # already below when the attack stopped
    ([0.2, 0.8, 0.9, 1.0, 0.5, 0.49], 2),  # 0.5 itself is not below
])
def test_lifespan_is_rounds_after_the_last_attack_until_it_first_falls_below(backdoor, lifespan):
    out = backdoor_lifespan(_rows(backdoor, attacked=4))
    assert out["lifespan"] == lifespan and out["status"] == "fell_below"
    assert out["last_attack_round"] == 9 and out["threshold"] == 0.5
    assert out["rounds_after_attack"] == len(backdoor) - 4


def test_lifespan_never_fell_is_null_with_the_rounds_observed():
    out = backdoor_lifespan(_rows([0.3, 0.9, 1.0, 1.0, 0.9, 0.8, 0.6], attacked=4))
    assert out["lifespan"] is None and out["status"] == "never_fell"
    assert out["rounds_after_attack"] == 3
    # Attacking to the last round leaves nothing to outlive.
    till_end = backdoor_lifespan(_rows([0.3, 0.9, 1.0], attacked=3))
    assert till_end["status"] == "never_fell" and till_end["rounds_after_attack"] == 0


def test_lifespan_never_rose_is_null():
    out = backdoor_lifespan(_rows([0.1, 0.2, 0.3, 0.45, 0.6, 0.2], attacked=4))
    assert out["lifespan"] is None and out["status"] == "never_rose"


def test_lifespan_counts_from_the_last_round_an_attacker_was_aggregated():
    rows = _rows([0.9, 0.9, 0.9, 0.9, 0.9, 0.1], attacked=2)
    rows[3]["num_malicious"] = 1  # round 9: a random schedule sampled one attacker again
    assert backdoor_lifespan(rows)["last_attack_round"] == 9
    assert backdoor_lifespan(rows)["lifespan"] == 2


def test_no_lifespan_without_a_backdoor_or_an_attack_and_other_phases_ignored():
    assert backdoor_lifespan(_rows([0.9, 0.1], attacked=0)) is None
    clean = [{k: v for k, v in r.items() if k != "backdoor_accuracy"}
             for r in _rows([0.9, 0.1], attacked=2)]
    assert backdoor_lifespan(clean) is None
    rows = _rows([0.9, 0.9, 0.9], attacked=3) + _rows([0.1, 0.1], 0, first=9, phase="finetune")
    assert backdoor_lifespan(rows)["status"] == "never_fell"


def test_summary_holds_the_lifespan(tmp_path):
    writer = ResultsWriter(tmp_path, ExperimentConfig())
    for row in _rows([0.2, 0.8, 0.9, 1.0, 0.9, 0.7, 0.4, 0.3], attacked=4):
        writer.write_round(row)
    writer.finish(1.0)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lifespan"] == 3 and summary["durability"]["status"] == "fell_below"
    plain = ResultsWriter(tmp_path / "clean", ExperimentConfig())
    plain.write_round({"round": 1, "phase": "train", "main_accuracy": 0.9, "main_loss": 0.3})
    assert "lifespan" not in plain.finish(1.0)


def test_negative_stop_round_fails_validation_in_one_line():
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig(attack={"name": "boosted", "stop_round": -1}))
    assert "attack.stop_round=-1 must be >= 0" in str(err.value) and "\n" not in str(err.value)
    validate(ExperimentConfig(attack={"name": "boosted", "stop_round": 4}))
