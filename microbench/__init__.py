"""Microbenchmarks: one script per kernel family (run as ``python -m microbench.bench_<op>``)."""
