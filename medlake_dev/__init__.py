"""Dev tooling, not deployed: synthetic feeds, the demo, local workers, benchmarks."""
