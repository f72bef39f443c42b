"""Exact scoring of stored rows: kernels, the int4 prefilter, the compiled kernel."""
