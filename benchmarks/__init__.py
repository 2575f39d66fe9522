"""The benchmark suite: ``python -m benchmarks [--quick] [--out FILE]``."""
