"""The round's isolation figures from the clients' replies (client-side ABL): how many examples
the sampled clients hold isolated, and the isolation precision over the clients whose data was
poisoned (a client with clean data can only isolate clean examples, which says nothing about
how well ABL finds poison)."""

from __future__ import annotations

from flwr.app import Message


def isolation_metrics(replies: list[Message]) -> dict:
    records = [next(iter(m.content.metric_records.values())) for m in replies]
    records = [r for r in records if "isolated_count" in r]
    if not records:
        return {}
    isolated = sum(int(r["isolated_count"]) for r in records)
    on_poisoned = [r for r in records if r.get("poisoned_count", 0) > 0]
    hits = sum(int(r["isolated_poisoned"]) for r in on_poisoned)
    picked = sum(int(r["isolated_count"]) for r in on_poisoned)
    return {"isolated_count": isolated,
            "isolation_precision": hits / picked if picked else None,
            "poisoned_clients": len(on_poisoned)}
