"""Defenses as pure tensor functions with thin strategy glue: norm clipping, weak DP noise,
robust aggregation, federated pruning votes and masks, extreme-weight adjustment, ABL losses.

Filled by the defense issues; each plugs into one hook of the server strategy or the client's
training routine.
"""
