"""Benchmarks on production-shaped data, each against a baseline measured in the same run."""
