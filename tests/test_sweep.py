"""A sweep's rows (``sweep_summary.csv``): done jobs with their figures, failed jobs with their
reason, remote jobs read where the ServerApp wrote them or said to be there; and ``skip_done``'s
test of "the same experiment"."""

import json

from launcher.sweep import (ERROR_FILE, REMOTE_RESULTS_FILE, same_experiment, summary_figures,
                            sweep_rows)


def _job(sweep, name, summary=None, error=None, remote=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    if error is not None:
        (job / ERROR_FILE).write_text(error + "\n")
    if remote is not None:
        (job / REMOTE_RESULTS_FILE).write_text(f"{remote}\n")


def test_rows_done_failed_and_remote(tmp_path):
    sweep, shared = tmp_path / "sweep", tmp_path / "shared_disk"
    shared.mkdir(parents=True)
    (shared / "summary.json").write_text(json.dumps(
        {"rounds": 3, "wall_time_s": 5.0, "final": {"main_accuracy": 0.9}}))
    _job(sweep, "0", summary={"rounds": 2, "wall_time_s": 1.0, "final": {"main_accuracy": 0.8}})
    _job(sweep, "1", error="error: client.lr=-1.0 must be positive")
    _job(sweep, "2", remote=shared)  # results on a shared disk: read there
    _job(sweep, "3", remote="/on/the/superlink/host")  # not readable from here
    rows = {r["job"]: r for r in sweep_rows(sweep)}
    assert rows[0]["status"] == "done" and rows[0]["final_main_accuracy"] == 0.8
    assert rows[1]["status"] == "failed" and rows[1]["error"].endswith("must be positive")
    assert rows[2]["status"] == "done" and rows[2]["final_main_accuracy"] == 0.9
    assert rows[3]["status"] == "remote" and rows[3]["results"] == "/on/the/superlink/host"
    assert rows[0]["overrides"] == "seed=0"


def test_same_experiment_ignores_where_and_how_not_what():
    a = {"seed": 0, "data": {"root": "/a"}, "federation": {"mode": "local"}, "skip_done": True,
         "defense": {"name": "flame"}}
    b = dict(a, data={"root": "/b"}, federation={"mode": "simulation"}, skip_done=False)
    assert same_experiment(a, b)
    assert not same_experiment(a, dict(a, seed=1))
    assert not same_experiment(a, dict(a, defense={"name": "krum"}))
    assert same_experiment(a, dict(a, tracking={"name": "tensorboard"}))


def test_an_option_added_since_the_run_counts_only_at_its_default():
    stored = {"seed": 0, "attack": {"name": "boosted", "num_malicious": 2}}
    defaults = {"seed": 0, "attack": {"name": "boosted", "num_malicious": 1, "stop_round": 0}}
    now = {"seed": 0, "attack": {"name": "boosted", "num_malicious": 2, "stop_round": 0}}
    assert same_experiment(stored, now, defaults)
    assert not same_experiment(stored, now)  # no defaults known: a new key differs
    assert not same_experiment(stored, {"seed": 0, "attack": {**now["attack"], "stop_round": 4}},
                               defaults)
    assert not same_experiment({**stored, "removed_option": 1}, now, defaults)


def test_every_number_of_a_summary_is_a_figure():
    summary = {"config": {"seed": 3}, "roles": {"malicious": [1]}, "rounds": 4,
               "mean_backdoor_accuracy": 0.5, "final": {"round": 4, "main_accuracy": 0.9,
                                                        "flagged": [1], "detector": True},
               "detection": {"recall": 1.0, "tp": 4},
               "phases": {"prune": {"main_accuracy": 0.8}}}
    assert summary_figures(summary) == {
        "rounds": 4, "mean_backdoor_accuracy": 0.5, "final_main_accuracy": 0.9,
        "detection_recall": 1.0, "detection_tp": 4, "phases_prune_main_accuracy": 0.8}
