"""Shared pieces of the testbed: config schema, models, data and partitioning, training loops.

Kept import-light: a ClientApp process imports this package on every message.
"""
