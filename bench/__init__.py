"""Benchmarks: each prints ratios against a floor measured side by side in the same run (see DESIGN.md)."""
