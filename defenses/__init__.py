"""Server-side defenses, one registered module each (``base.py``: the interface,
``detection.py``: how well a flagged set detects), and the math of the post-training and
client-side defenses (federated pruning, ABL) as pure tensor functions."""
