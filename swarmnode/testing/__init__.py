"""Test harness pieces that real-process tests and benchmarks share (loopback only)."""
