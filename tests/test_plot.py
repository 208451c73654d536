import json

from launcher.plot import default_labels, plot_runs, run_dirs


def _run(folder, overrides, backdoor=True):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = [{"round": r, "main_accuracy": 0.5 + r / 10,
             **({"backdoor_accuracy": r / 5} if backdoor else {})} for r in range(1, 4)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_sweep_folder_expands_to_jobs_and_labels_show_what_differs(tmp_path):
    _run(tmp_path / "sweep" / "0", ["experiment=sun2019_fig4a", "defense.norm_bound=3", "data.root=x"])
    _run(tmp_path / "sweep" / "1", ["experiment=sun2019_fig4a", "defense.norm_bound=5", "data.root=x"])
    clean = _run(tmp_path / "clean", ["experiment=sun2019_clean"], backdoor=False)
    runs = run_dirs([tmp_path / "sweep", clean])
    assert [r.name for r in runs] == ["0", "1", "clean"]
    assert default_labels(runs[:2]) == ["defense.norm_bound=3", "defense.norm_bound=5"]
    out = plot_runs(runs, default_labels(runs), tmp_path / "fig.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
