"""Everything a malicious node does differently from a benign one: poisoned data and triggers,
boosted and norm-bounded (projected) updates, lying answers in query rounds, malformed updates.

Filled by the attack issues; a node runs this code when its role is ``malicious``.
"""
