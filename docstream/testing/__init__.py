"""Tooling for tests, benchmarks and ``docstream selftest``: not used by streaming or training.

``checkpoints`` writes random RWKV checkpoints in BlinkDL's layout.
"""
