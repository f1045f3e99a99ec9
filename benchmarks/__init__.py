"""Benchmarks that write BENCHMARKS.md (``python benchmarks/run_all.py``, ``make bench``)."""
