"""Speed measurements (`make bench`: `python -m benchmarks.run`, `python -m benchmarks.sweep`)."""
