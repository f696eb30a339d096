"""Selector benchmarks: config, data sets, the run, its tables and its report data."""
