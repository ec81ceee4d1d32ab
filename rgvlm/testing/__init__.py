"""Fixtures that are not part of the pipeline: built for the tests and the benchmarks (which
run without the test suite, so these live in the package rather than under ``tests/``).
No stage imports this package."""
