"""The round's isolation figures from the clients' replies (client-side ABL): how many examples
the sampled clients hold isolated, and the isolation precision over the clients whose data was
poisoned (a client with clean data can only isolate clean examples, which says nothing about
how well ABL finds poison)."""

from __future__ import annotations

from flbackdoor import protocol as P


def isolation_metrics(metrics: list[dict]) -> dict:
    """From the valid replies' metric records."""
    records = [r for r in metrics if P.ISOLATED_COUNT in r]
    if not records:
        return {}
    isolated = sum(int(r[P.ISOLATED_COUNT]) for r in records)
    on_poisoned = [r for r in records if r.get(P.POISONED_COUNT, 0) > 0]
    hits = sum(int(r[P.ISOLATED_POISONED]) for r in on_poisoned)
    picked = sum(int(r[P.ISOLATED_COUNT]) for r in on_poisoned)
    return {"isolated_count": isolated,
            "isolation_precision": hits / picked if picked else None,
            "poisoned_clients": len(on_poisoned)}
