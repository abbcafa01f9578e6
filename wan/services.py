"""What the nodes, the headless runner and the benchmarks call: cached loads and the encode /
sample steps, each one function. Imports of the heavier modules happen inside the functions so
importing the pack stays fast.
"""
from __future__ import annotations
