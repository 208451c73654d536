"""Datasets, partitions and the memory-mapped caches clients read their partition from."""
