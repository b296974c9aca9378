"""Benchmarks run by `make bench`: each prints ratios measured within one run, never absolute thresholds."""
