"""Reports of selections and benchmarks."""
