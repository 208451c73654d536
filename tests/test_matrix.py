"""The attack x defense matrix: every cell of ``experiment=matrix`` composes and validates, the
report turns finished runs into the table, and a quick real sweep (one defense, two columns)
runs, is kept by a rerun (``skip_done``) and is reported."""

from __future__ import annotations

import json
import time

import pytest

from conftest import data_args, flbackdoor, requires_shared_data, resolved
from launcher.matrix import NOT_ATTACKS, axes, main as matrix_main, markdown, read_cells


def test_every_row_and_column_of_the_matrix_composes_and_validates():
    """A new defense or attack becomes a row or column by itself: it must run with the
    matrix's settings (2 attackers of 10, every round, a pixel trigger). Each row against the
    boosted attackers, each column under FedAvg (every pair would take a minute)."""
    from flbackdoor.registries import ATTACKS, DEFENSES

    attacks = [a for a in ATTACKS.names() if a not in NOT_ATTACKS]
    assert {"none", "boosted", "norm_bounded", "data_poisoning", "dba"} <= set(attacks)
    cells = {(d, "boosted") for d in DEFENSES.names()} | {("none", a) for a in attacks}
    for defense, attack in sorted(cells):
        cfg = resolved("experiment=matrix", f"defense={defense}", f"attack={attack}")
        assert cfg.defense.name == defense and cfg.attack.name == attack
        assert cfg.skip_done and cfg.federation.mode == "simulation"
        if attack == "none":
            assert cfg.attack.num_malicious == 0
        else:
            assert (cfg.attack.num_malicious, cfg.attack.schedule) == (2, "random")
            # DBA splits its trigger, label flipping has none, A3FL optimises its own patch,
            # IBA its own generator; the others use the pattern.
            own = {"dba": "dba", "label_flip": "label_flip", "a3fl": "a3fl", "iba": "iba"}
            assert cfg.attack.task == own.get(attack, "pixel_pattern")


def _job(folder, defense, attack, main, backdoor=None, detection=None):
    job = folder / defense / attack
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- defense={defense}\n- attack={attack}\n")
    final = {"main_accuracy": main, **({} if backdoor is None else
                                       {"backdoor_accuracy": backdoor})}
    summary = {"config": {"defense": {"name": defense}, "attack": {"name": attack}},
               "final": final, "rounds": 4, "wall_time_s": 9.0,
               **({} if detection is None else {"detection": detection})}
    (job / "summary.json").write_text(json.dumps(summary))


def test_report_cells_effects_and_missing_cells(tmp_path):
    _job(tmp_path, "none", "none", 0.95)
    _job(tmp_path, "none", "boosted", 0.90, backdoor=0.99)
    _job(tmp_path, "multikrum", "boosted", 0.94, backdoor=0.05,
         detection={"recall": 1.0, "precision": 0.5, "fpr": 0.25})
    _job(tmp_path, "multikrum", "none", 0.93)
    _job(tmp_path, "multikrum", "sign_flip", 0.60)  # untargeted: the drop from 0.93
    (tmp_path / "none" / "dba" / ".hydra").mkdir(parents=True)  # started, never finished
    cells = read_cells(tmp_path)
    assert set(cells) == {("none", "none"), ("none", "boosted"), ("multikrum", "boosted"),
                          ("multikrum", "none"), ("multikrum", "sign_flip")}
    assert cells["multikrum", "sign_flip"].drop == pytest.approx(0.33)
    rows, cols = axes(cells)
    assert rows[0] == "none" and cols[0] == "none" and "sign_flip" in cols
    assert "malformed" not in cols and "dba" in cols
    table = markdown(cells, rows, cols)
    line = {ln.split(" | ")[0]: ln for ln in table.splitlines()}
    assert "| 0.940 / 0.050 / 1.00 |" in line["| multikrum"]
    assert "| 0.900 / 0.990 / - |" in line["| none"]  # FedAvg detects nobody
    assert "0.600 / 0.330 / -" in line["| multikrum"]
    assert "none/dba" in table.split("Not measured yet:")[1]
    assert f"5 of {len(rows) * len(cols)} cells measured" in table
    matrix_main([str(tmp_path)])
    assert (tmp_path / "matrix.png").stat().st_size > 0
    assert (tmp_path / "matrix.csv").read_text().count("\n") == 6
    matrix_main([str(tmp_path), "--attacks", "none,boosted", "-o", str(tmp_path / "two")])
    head = (tmp_path / "two" / "matrix.md").read_text().splitlines()[0]
    assert head == "| defense | none | boosted |"
    with pytest.raises(SystemExit):
        matrix_main([str(tmp_path), "--attacks", "boostd"])


@requires_shared_data
def test_quick_matrix_runs_is_kept_by_a_rerun_and_is_reported(tmp_path, cache_dir):
    """CI's quick mode: Multi-Krum against no attack and the boosted BadNets attackers, one
    pretraining and one attack round on 2,000 images; then the same command again."""
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=matrix", *data_args(cache_dir), "defense=multikrum",
            "attack=none,boosted", "pretrain_rounds=1", "num_rounds=1",
            "dataset.max_train_samples=2000", "server.eval_max_samples=500",
            f"hydra.sweep.dir={sweep}"]
    res = flbackdoor(args, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    first = {p: (p / "summary.json").stat().st_mtime for p in (sweep / "multikrum").iterdir()}
    assert sorted(p.name for p in first) == ["boosted", "none"]
    rows = [json.loads(ln) for ln in (sweep / "multikrum" / "boosted" / "metrics.jsonl")
            .read_text().splitlines()]
    attack = [r for r in rows if r["phase"] == "train"]
    assert attack and all(r["num_malicious"] == 2 and "detection_recall" in r for r in attack)

    started = time.monotonic()
    res = flbackdoor(args, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("already holds this experiment's finished run") + \
        res.stderr.count("already holds this experiment's finished run") == 2
    assert {p: (p / "summary.json").stat().st_mtime for p in first} == first  # not rerun
    assert time.monotonic() - started < 60

    matrix_main([str(sweep)])
    table = (sweep / "matrix.md").read_text()
    head = next(ln for ln in table.splitlines() if ln.startswith("| defense |"))
    line = next(ln for ln in table.splitlines() if ln.startswith("| multikrum |"))
    cells = dict(zip([c.strip() for c in head.strip("|").split("|")],
                     [c.strip() for c in line.strip("|").split("|")]))
    assert cells["none"] != "…" and cells["boosted"].count("/") == 2, line  # both measured
    assert cells["dba"] == "…"  # registered, not measured here
