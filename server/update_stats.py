"""Per-round statistics of the updates the server received (before any defense)."""

from __future__ import annotations

import numpy as np


def update_statistics(norms: list[float], malicious: list[bool]) -> dict:
    """Benign norm p50/p90 and the largest malicious norm."""
    benign = [n for n, m in zip(norms, malicious) if not m]
    bad = [n for n, m in zip(norms, malicious) if m]
    return {
        "benign_norm_p50": float(np.percentile(benign, 50)) if benign else None,
        "benign_norm_p90": float(np.percentile(benign, 90)) if benign else None,
        "max_malicious_norm": max(bad) if bad else None,
    }
