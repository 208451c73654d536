"""How well a defense detected the round's attackers: its flagged set against the malicious
partitions that sent an update (BackFed's detection figures, computed once for all defenses).

Only updates the defense saw count: an attacker whose reply never came, or was rejected by
validation, is neither caught nor missed. A figure with an empty denominator is None, never a
misleading 0: precision when nobody was flagged, recall when no attacker reported, FPR when no
benign node did.
"""

from __future__ import annotations


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def score(flagged: set[int] | frozenset[int], malicious: set[int] | frozenset[int],
          reporting: list[int]) -> dict:
    """Confusion counts and precision, recall, FPR of ``flagged`` over ``reporting``."""
    seen = set(reporting)
    flagged = set(flagged) & seen
    bad = set(malicious) & seen
    good = seen - bad
    tp, fp = len(flagged & bad), len(flagged - bad)
    fn, tn = len(bad - flagged), len(good - flagged)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "fpr": _ratio(fp, fp + tn)}


def totals(rounds: list[dict]) -> dict:
    """Counts summed over rounds (``score`` outputs) and the figures of the sums."""
    tp, fp, fn, tn = (sum(r[k] for r in rounds) for k in ("tp", "fp", "fn", "tn"))
    return {"rounds": len(rounds), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "fpr": _ratio(fp, fp + tn)}
