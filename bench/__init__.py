"""Benchmarks: raw forward throughput and the served pipeline, measured in one run."""
