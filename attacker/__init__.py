"""Everything a malicious node does differently from a benign one: registered attacks, one
module each (``base.py``: the interface), backdoor tasks and triggers, outsider poisoning, lying
answers in query rounds, malformed updates."""
