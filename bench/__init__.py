"""Benchmarks for `make bench`: run `python -m bench --help`."""
