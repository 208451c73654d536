"""The paper-style table of Wu et al.'s defense from finished runs (``summary.json`` ``phases``):
one row per victim/target pair with test accuracy and attack success rate (%) after training,
pruning, extreme-weight adjustment and fine-tuning (+ adjustment), the paper's Table IV numbers
beside (for runs in Table IV's setting; "-" for others, e.g. Tables I, III, V), and the means.

    python -m launcher.pruning_table <run folder>... [-o table.md] [--title ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Wu et al. Table IV (MNIST, 3-label, 10 clients, one attacker): (vic, atk) -> training test acc,
# atk acc; pruning without fine-tuning test, atk; with fine-tuning test, atk.
PAPER_TABLE_IV = {
    (9, 0): (98.2, 99.7, 94.7, 0.3, 96.6, 0.8), (9, 1): (98.6, 100, 95.1, 0.4, 96.9, 0.1),
    (9, 2): (98.2, 99.9, 95.7, 4.1, 97.2, 2.5), (9, 3): (98.3, 99.6, 95.6, 36.9, 97.2, 8.8),
    (9, 4): (98.5, 100, 97.2, 5, 98.1, 3.5), (9, 5): (98.5, 99.9, 86.6, 14, 94.6, 2.8),
    (9, 6): (98.6, 99.7, 96.4, 0.1, 97.5, 0.1), (9, 7): (98.9, 99.8, 94.1, 0.8, 98.2, 0.5),
    (9, 8): (98.5, 99.9, 93.9, 4.5, 96.6, 3.1), (0, 9): (97.8, 99.8, 95.4, 0, 96.9, 0.9),
    (1, 9): (98.2, 99.5, 94.5, 0.1, 97.2, 0.5), (2, 9): (98.3, 100, 94.9, 1.2, 97.5, 0.5),
    (3, 9): (98.5, 99.5, 95, 34.9, 96, 26.3), (4, 9): (98.5, 99.9, 93.4, 27.1, 96.4, 14.7),
    (5, 9): (98.5, 99.8, 95.2, 1.3, 97.5, 1.6), (6, 9): (98.3, 99.3, 94.8, 1.5, 97.3, 0.3),
    (7, 9): (97.9, 99.1, 93.8, 18.5, 96.9, 16.4), (8, 9): (97.5, 99.4, 93.3, 1.2, 96.3, 0.5),
}

PHASES = ("train", "prune", "adjust", "finetune_adjust")


def in_table_iv_setting(config: dict) -> bool:
    """Whether a run's numbers compare with Table IV's: MNIST, the 20/50-channel net, the 9-pixel
    pattern (our reading of the pattern Table IV used). Tables I, III and V's runs are not."""
    return (config.get("dataset", {}).get("name", "mnist") == "mnist"
            and list(config.get("model", {}).get("conv_channels", [20, 50])) == [20, 50]
            and config.get("attack", {}).get("pattern_pixels", 9) == 9)


def row_of(run: Path) -> dict:
    """One table row from a run folder: the pair and each phase's figures in %."""
    summary = json.loads((run / "summary.json").read_text())
    attack = summary["config"]["attack"]
    pair = (attack["source_label"], attack["target_label"])
    out: dict = {"vic": pair[0], "atk": pair[1], "run": run.name,
                 "paper": PAPER_TABLE_IV.get(pair) if in_table_iv_setting(summary["config"])
                 else None}
    for phase in PHASES:
        block = summary.get("phases", {}).get(phase)
        if block is None:
            continue
        out[phase] = {"test": 100 * block["main_accuracy"],
                      "asr": 100 * block.get("backdoor_accuracy", float("nan")),
                      "neurons": block.get("neurons_pruned"),
                      "weights": block.get("weights_zeroed")}
    return out


def _f(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def markdown(rows: list[dict]) -> str:
    head = ("| vic | atk | train test | train atk | pruned | prune test | prune atk | zeroed | "
            "adjust test | adjust atk | fine-tune+adjust test | fine-tune+adjust atk | "
            "paper: train test / atk | paper: w/o FT test / atk | paper: with FT test / atk |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    sums: dict[str, list[float]] = {}
    for r in sorted(rows, key=lambda r: (r["vic"], r["atk"])):
        cells = [str(r["vic"]), str(r["atk"])]
        for phase, keys in (("train", ("test", "asr")), ("prune", ("neurons", "test", "asr")),
                            ("adjust", ("weights", "test", "asr")),
                            ("finetune_adjust", ("test", "asr"))):
            block = r.get(phase, {})
            for key in keys:
                value = block.get(key)
                cells.append(_f(value))
                if value is not None:
                    sums.setdefault(f"{phase}.{key}", []).append(float(value))
        paper = r["paper"]
        cells += ([f"{paper[0]} / {paper[1]}", f"{paper[2]} / {paper[3]}",
                   f"{paper[4]} / {paper[5]}"] if paper else ["-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["**mean**", ""]
    for key in ("train.test", "train.asr", "prune.neurons", "prune.test", "prune.asr",
                "adjust.weights", "adjust.test", "adjust.asr", "finetune_adjust.test",
                "finetune_adjust.asr"):
        values = sums.get(key, [])
        mean.append(f"**{sum(values) / len(values):.1f}**" if values else "-")
    papers = [r["paper"] for r in rows if r["paper"]]
    for i in (0, 2, 4):
        mean.append(" / ".join(f"{sum(p[j] for p in papers) / len(papers):.1f}" for j in (i, i + 1))
                    if papers else "-")
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    rows = [row_of(r) for r in args.runs if (r / "summary.json").exists()]
    text = markdown(rows)
    if args.output:
        args.output.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
