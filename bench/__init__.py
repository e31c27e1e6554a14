"""Benchmarks for seedstory (``python -m bench``): the efficiency side of the SEED-Story paper's Table 8."""
