"""Benchmarks: each measures tuneforge beside a baseline in the same run (see bench/README.md)."""
