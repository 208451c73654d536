"""``flbackdoor-report``: a sweep's results across seeds. The jobs of a sweep folder (``flbackdoor
-m ...``) are grouped by the swept keys other than ``seed``; each group's figures are given as
mean ± std over its seeds (sample std, ddof 1) in ``report.md`` and ``report.csv``, and its
per-round curves as ``report.png``: mean and a ± std band, main task dotted, backdoor solid, as
Sun et al.'s figures draw them.

    flbackdoor -m defense=none,norm_clipping seed=0,1 attack=boosted ...
    flbackdoor-report multirun/2026-12-01/10-00-00            # -> report.{md,csv,png} there
    flbackdoor-report <sweep> -f final_main_accuracy -f detection_recall -o docs/
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from flbackdoor.results import read_metrics
from launcher.sweep import job_dirs, summary_figures

SEED = "seed"
# The figures report.md shows unless asked for others (report.csv has every figure).
DEFAULT_FIGURES = ("final_main_accuracy", "final_backdoor_accuracy", "mean_backdoor_accuracy",
                   "detection_recall", "detection_fpr")


@dataclass
class Group:
    key: tuple[tuple[str, str], ...]  # the swept keys' values, seed excepted
    jobs: list[Path] = field(default_factory=list)  # finished jobs (a summary.json)
    failed: int = 0
    figures: list[dict[str, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.key) or "all jobs"


def job_overrides(job: Path) -> dict[str, str]:
    """The job's command-line overrides as key -> value (``+``/``++`` prefixes dropped)."""
    out = {}
    for item in OmegaConf.load(job / ".hydra" / "overrides.yaml"):
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def swept_keys(overrides: list[dict[str, str]]) -> list[str]:
    """The keys whose value is not the same in every job, ``seed`` excepted, in first-seen order."""
    keys: list[str] = []
    for o in overrides:
        keys += [k for k in o if k not in keys]
    return [k for k in keys if k != SEED and len({o.get(k) for o in overrides}) > 1]


def group_jobs(sweep_dir: Path) -> list[Group]:
    jobs = job_dirs(sweep_dir)
    overrides = [job_overrides(j) for j in jobs]
    keys = swept_keys(overrides)
    groups: dict[tuple, Group] = {}
    for job, o in zip(jobs, overrides):
        key = tuple((k, o.get(k, "")) for k in keys)
        group = groups.setdefault(key, Group(key))
        summary = job / "summary.json"
        if summary.exists():
            group.jobs.append(job)
            group.figures.append(summary_figures(json.loads(summary.read_text())))
        else:
            group.failed += 1
    return list(groups.values())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(group: Group, name: str) -> tuple[float, float, int] | None:
    """(mean, std, n) of one figure over the group's seeds that have it; None if none has it."""
    values = [f[name] for f in group.figures if f.get(name) is not None]
    return (*mean_std(values), len(values)) if values else None


def _cell(stat: tuple[float, float, int] | None) -> str:
    return "-" if stat is None else f"{stat[0]:.4f} ± {stat[1]:.4f}"


def markdown(groups: list[Group], figures: list[str]) -> str:
    keys = [k for k, _ in groups[0].key] if groups else []
    head = [*(keys or ["jobs"]), "seeds", *figures]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [v for _, v in g.key] or [g.label]
        seeds = f"{len(g.jobs)}" + (f" ({g.failed} failed)" if g.failed else "")
        lines.append("| " + " | ".join([*cells, seeds, *(_cell(aggregate(g, f))
                                                         for f in figures)]) + " |")
    return "\n".join(lines) + "\n"


def write_csv(groups: list[Group], path: Path) -> None:
    names: list[str] = []
    for g in groups:
        for f in g.figures:
            names += [n for n in f if n not in names]
    keys = [k for k, _ in groups[0].key] if groups else []
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*keys, "seeds", "failed",
                         *(f"{n}_{s}" for n in names for s in ("mean", "std"))])
        for g in groups:
            stats = [aggregate(g, n) for n in names]
            writer.writerow([*(v for _, v in g.key), len(g.jobs), g.failed,
                             *(x for s in stats for x in ((s[0], s[1]) if s else ("", "")))])


def curves(job: Path, metric: str) -> dict[int, float]:
    """A job's training rounds -> ``metric`` (pruning and pretraining phases left out)."""
    rows = read_metrics(job / "metrics.jsonl") if (job / "metrics.jsonl").exists() else []
    return {r["round"]: r[metric] for r in rows
            if r.get("phase", "train") == "train" and r.get(metric) is not None}


def plot(groups: list[Group], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        color = colors[i % len(colors)]
        for metric, style, what in (("main_accuracy", ":", "main"),
                                    ("backdoor_accuracy", "-", "backdoor")):
            per_seed = [curves(j, metric) for j in g.jobs]
            rounds = sorted(set().union(*per_seed)) if per_seed else []
            if not rounds:
                continue
            stats = [mean_std([c[r] for c in per_seed if r in c]) for r in rounds]
            mean = [m for m, _ in stats]
            ax.plot(rounds, mean, style, color=color, label=f"{g.label} ({what})")
            ax.fill_between(rounds, [m - s for m, s in stats], [m + s for m, s in stats],
                            color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flbackdoor-report", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="a multirun folder (its jobs' .hydra/ and results)")
    ap.add_argument("-f", "--figure", action="append", dest="figures",
                    help="a summary figure for report.md (repeatable; default: "
                         + ", ".join(DEFAULT_FIGURES) + ")")
    ap.add_argument("-o", "--out", type=Path, help="where to write (default: the sweep folder)")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        ap.error(f"{args.sweep_dir} is not a folder")
    groups = group_jobs(args.sweep_dir)
    if not any(g.jobs for g in groups):
        ap.error(f"{args.sweep_dir} holds no finished job (.hydra/overrides.yaml + summary.json)")
    names = {n for g in groups for f in g.figures for n in f}
    figures = args.figures or [f for f in DEFAULT_FIGURES if f in names]
    unknown = [f for f in figures if f not in names]
    if unknown:
        ap.error(f"no job reports {', '.join(unknown)}; figures here: {', '.join(sorted(names))}")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(groups, figures)
    (out / "report.md").write_text(table)
    write_csv(groups, out / "report.csv")
    plot(groups, out / "report.png")
    print(table, end="")
    print(f"wrote {out / 'report.md'}, report.csv and report.png: {len(groups)} groups")


if __name__ == "__main__":
    main()
