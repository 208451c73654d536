"""``flbackdoor-plot``: runs (or whole sweeps) on one figure in the paper's style: one colour
per run, main task dotted, backdoor task solid.

    flbackdoor-plot outputs/.../run_a outputs/.../run_b --label "M=3" --label "M=5" -o fig.png
    flbackdoor-plot multirun/2026-11-21/20-00-00 -o sweep.png     # every job of a sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders; a sweep folder stands for its job folders."""
    from launcher.sweep import job_dirs

    out = []
    for p in paths:
        jobs = job_dirs(p) if p.is_dir() else []
        out += [j for j in jobs if (j / "metrics.jsonl").exists()] or [p]
    return out


def overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    lines = [ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("- ")]
    return [ln for ln in lines if not ln.startswith(("data.", "hydra."))]


def default_labels(runs: list[Path]) -> list[str]:
    """Each run's Hydra overrides, less those every plotted run shares."""
    per_run = [overrides(r) for r in runs]
    shared = set.intersection(*map(set, per_run)) if len(per_run) > 1 else set()
    return [" ".join(o for o in ov if o not in shared) or run.name
            for ov, run in zip(per_run, runs)]


def plot_runs(runs: list[Path], labels: list[str], out: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (run, label) in enumerate(zip(runs, labels)):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
        colour = f"C{i}"
        rounds = [r["round"] for r in rows]
        ax.plot(rounds, [r["main_accuracy"] for r in rows], ":", color=colour)
        if rows and "backdoor_accuracy" in rows[0]:
            ax.plot(rounds, [r["backdoor_accuracy"] for r in rows], "-", color=colour, label=label)
        else:
            ax.plot([], [], "-", color=colour, label=f"{label} (no attack)")
    ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02),
           title=title or "dotted: main task, solid: backdoor task")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument("--label", action="append", default=[], help="one per run, in order")
    parser.add_argument("--title", default="")
    parser.add_argument("-o", "--out", type=Path, default=Path("curves.png"))
    args = parser.parse_args(argv)
    runs = run_dirs(args.paths)
    labels = args.label + default_labels(runs)[len(args.label):]
    print(plot_runs(runs, labels, args.out, args.title))


if __name__ == "__main__":
    main()
