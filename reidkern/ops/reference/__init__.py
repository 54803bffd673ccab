"""Eager references: the fallback when no kernel is compiled, the tests' oracle, the benchmarks' baseline."""
