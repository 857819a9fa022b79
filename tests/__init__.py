"""csbs-sim's tests; `tests.harness` is also what the benchmarks run clusters with."""
