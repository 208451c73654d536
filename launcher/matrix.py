"""``flbackdoor-matrix``: the attack x defense matrix of a sweep folder (``flbackdoor -m
experiment=matrix``) as ``matrix.md``, ``matrix.csv`` and a heatmap, ``matrix.png``.

One row per defense, one column per attack; a cell holds the final main accuracy, then the
attack's effect (backdoor attacks: the final backdoor accuracy, ASR; attacks without a backdoor
task: the drop in main accuracy from the same defense's unattacked cell), then the defense's
detection recall over the attack rounds ("-" for a defense that flags nobody by design). Cells of
registered options not measured yet are listed, so a partial matrix says what it lacks.

    flbackdoor-matrix matrix/cpu              # writes matrix/cpu/matrix.{md,csv,png}
    flbackdoor-matrix matrix/cpu -o docs/     # elsewhere
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from launcher.sweep import job_dirs

NO_ATTACK = "none"
FEDAVG = "none"
NOT_ATTACKS = ("malformed",)  # a protocol fault, not an attack (experiment=matrix leaves it out)


@dataclass
class Cell:
    defense: str
    attack: str
    main: float
    backdoor: float | None  # ASR; None for an attack without a backdoor task
    recall: float | None  # None: not a detector, or no attack round
    precision: float | None
    fpr: float | None
    rounds: int
    wall_time_s: float
    drop: float | None = None  # main-accuracy drop from the defense's unattacked cell


def read_cells(sweep_dir: Path) -> dict[tuple[str, str], Cell]:
    """Every finished job of the sweep, by (defense, attack); a later job of the same cell wins."""
    cells = {}
    for job in job_dirs(sweep_dir):
        path = job / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        config, final, det = s["config"], s.get("final", {}), s.get("detection", {})
        cell = Cell(config["defense"]["name"], config["attack"]["name"], final["main_accuracy"],
                    final.get("backdoor_accuracy"), det.get("recall"), det.get("precision"),
                    det.get("fpr"), s.get("rounds", 0), s.get("wall_time_s", 0.0))
        cells[cell.defense, cell.attack] = cell
    for (defense, attack), cell in cells.items():
        clean = cells.get((defense, NO_ATTACK))
        if attack != NO_ATTACK and cell.backdoor is None and clean is not None:
            cell.drop = clean.main - cell.main
    return cells


def axes(cells: dict[tuple[str, str], Cell]) -> tuple[list[str], list[str]]:
    """Rows and columns: every registered defense and attack (plus any measured one no longer
    registered); FedAvg and no attack first."""
    from flbackdoor.registries import ATTACKS, DEFENSES

    defenses = set(DEFENSES.names()) | {d for d, _ in cells}
    attacks = (set(ATTACKS.names()) - set(NOT_ATTACKS)) | {a for _, a in cells}
    first = lambda head: (lambda name: (name != head, name))  # noqa: E731
    return sorted(defenses, key=first(FEDAVG)), sorted(attacks, key=first(NO_ATTACK))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "…"
    effect = (cell.backdoor if cell.backdoor is not None
              else cell.drop if cell.attack != NO_ATTACK else None)
    parts = [_fmt(cell.main)]
    if cell.attack != NO_ATTACK:
        parts += [_fmt(effect), _fmt(cell.recall, 2)]
    return " / ".join(parts)


def markdown(cells: dict[tuple[str, str], Cell], rows: list[str], cols: list[str]) -> str:
    lines = ["| defense | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for d in rows:
        lines.append(f"| {d} | " + " | ".join(cell_text(cells.get((d, a))) for a in cols) + " |")
    missing = [f"{d}/{a}" for d in rows for a in cols if (d, a) not in cells]
    lines += ["", "Cells: final main accuracy / ASR (an untargeted attack: the drop in main "
              "accuracy from the defense's unattacked cell) / detection recall over the attack "
              "rounds (- : the defense flags nobody by design). Column `none`: no attack, main "
              f"accuracy only. {len(cells)} of {len(rows) * len(cols)} cells measured."]
    if missing:
        lines.append(f"Not measured yet: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def write_csv(cells: dict[tuple[str, str], Cell], path: Path) -> None:
    fields = list(Cell.__dataclass_fields__)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for key in sorted(cells):
            writer.writerow({k: getattr(cells[key], k) for k in fields})


def heatmap(cells: dict[tuple[str, str], Cell], rows: list[str], cols: list[str],
            path: Path) -> None:
    """Colour: the attack's effect (ASR or accuracy drop; the none column: main accuracy, on
    its own scale is not comparable, so it is drawn grey); text: the cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    effect = np.full((len(rows), len(cols)), np.nan)
    for i, d in enumerate(rows):
        for j, a in enumerate(cols):
            c = cells.get((d, a))
            if c is not None and a != NO_ATTACK:
                value = c.backdoor if c.backdoor is not None else c.drop
                effect[i, j] = np.nan if value is None else value
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2, 0.45 * len(rows) + 1.5))
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(effect), cmap=cmap, vmin=0.0, vmax=1.0,
                      aspect="auto")
    for i, d in enumerate(rows):
        for j, a in enumerate(cols):
            ax.text(j, i, cell_text(cells.get((d, a))), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("attack (cell: main accuracy / ASR or accuracy drop / detection recall)")
    fig.colorbar(image, ax=ax, label="ASR (backdoor) or main-accuracy drop (untargeted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flbackdoor-matrix", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="the matrix sweep folder (e.g. matrix/cpu)")
    ap.add_argument("-o", "--out", type=Path, help="where to write (default: the sweep folder)")
    ap.add_argument("--attacks", help="only these columns, comma-separated (default: every "
                                      "registered attack and no attack)")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        ap.error(f"{args.sweep_dir} is not a folder")
    cells = read_cells(args.sweep_dir)
    if not cells:
        ap.error(f"{args.sweep_dir} holds no finished run (summary.json)")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    rows, cols = axes(cells)
    if args.attacks:
        wanted = args.attacks.split(",")
        unknown = [a for a in wanted if a not in cols]
        if unknown:
            ap.error(f"no attack {', '.join(unknown)}; attacks: {', '.join(cols)}")
        cols = [a for a in cols if a in wanted]
    (out / "matrix.md").write_text(markdown(cells, rows, cols))
    write_csv(cells, out / "matrix.csv")
    heatmap(cells, rows, cols, out / "matrix.png")
    print(f"wrote {out / 'matrix.md'}, matrix.csv and matrix.png: {len(cells)} cells")


if __name__ == "__main__":
    main()
