"""Synthetic, production-shaped facility feeds for demos, tests and benchmarks (`medlake generate`)."""

from medlake_dev.generate.feeds import (
    BAD_KINDS,
    SOURCES,
    BadKind,
    MissingPasswordError,
    generate_feeds,
    pick_target_sizes,
    write_feeds,
)

__all__ = [
    "BAD_KINDS",
    "SOURCES",
    "BadKind",
    "MissingPasswordError",
    "generate_feeds",
    "pick_target_sizes",
    "write_feeds",
]
