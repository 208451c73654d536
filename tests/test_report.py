"""``flbackdoor-report``: jobs grouped by the swept keys other than the seed, mean ± std across
seeds, the CSV and the plot, from hand-made sweep folders."""

import csv
import json

import pytest

from launcher.report import group_jobs, main, mean_std, swept_keys


def _job(sweep, name, overrides, backdoor=None, main_acc=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if main_acc is None:
        return
    rows = [{"round": r, "phase": "train", "main_accuracy": main_acc * r / 3,
             "backdoor_accuracy": backdoor * r / 3} for r in (1, 2, 3)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job / "summary.json").write_text(json.dumps(
        {"config": {}, "rounds": 3, "final": rows[-1], "mean_backdoor_accuracy": backdoor / 2,
         "detection": {"recall": 1.0}}))


@pytest.fixture
def sweep(tmp_path):
    """2 defenses x 2 seeds (norm_clipping's seed 1 failed) and a constant override."""
    s = tmp_path / "sweep"
    figures = {("none", 0): (0.9, 0.8), ("none", 1): (0.7, 0.6),
               ("norm_clipping", 0): (0.1, 0.9), ("norm_clipping", 1): (None, None)}
    for i, ((defense, seed), (backdoor, acc)) in enumerate(figures.items()):
        _job(s, str(i), [f"defense={defense}", f"seed={seed}", "data.root=/d"], backdoor, acc)
    return s


def test_mean_and_sample_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    m, sd = mean_std([1.0, 3.0])
    assert m == 2.0 and sd == pytest.approx(2 ** 0.5)


def test_the_seed_and_constant_overrides_do_not_split_groups(sweep):
    assert swept_keys([{"defense": "a", "seed": "0", "x": "1"},
                       {"defense": "b", "seed": "1", "x": "1"}]) == ["defense"]
    groups = {g.label: g for g in group_jobs(sweep)}
    assert sorted(groups) == ["defense=none", "defense=norm_clipping"]
    assert (len(groups["defense=none"].jobs), groups["defense=none"].failed) == (2, 0)
    assert (len(groups["defense=norm_clipping"].jobs), groups["defense=norm_clipping"].failed) \
        == (1, 1)


def test_report_prints_mean_std_rows_and_writes_csv_and_plot(sweep, capsys):
    main([str(sweep)])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| none"))
    # final backdoor 0.9 and 0.7: mean 0.8, sample std 0.1414; main 0.8 and 0.6
    assert "0.7000 ± 0.1414" in row and "0.8000 ± 0.1414" in row and "| 2 |" in row
    assert "| 1 (1 failed) |" in out
    with (sweep / "report.csv").open() as f:
        rows = {r["defense"]: r for r in csv.DictReader(f)}
    assert float(rows["none"]["mean_backdoor_accuracy_mean"]) == pytest.approx(0.4)
    assert float(rows["norm_clipping"]["final_backdoor_accuracy_std"]) == 0.0
    assert (sweep / "report.png").stat().st_size > 10_000


def test_unknown_figure_and_empty_folder_fail_in_one_line(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(sweep), "-f", "final_nonsense"])
    assert "no job reports final_nonsense" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty")])
    assert "holds no finished job" in capsys.readouterr().err
