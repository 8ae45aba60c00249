"""The studies: ``multihead`` (study 1, multi-head superiority) and ``head_utilization`` (study 2)."""
