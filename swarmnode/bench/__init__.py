"""Benchmarks behind ``swarmnode bench*``: each prints ratios measured side by side in one run."""
