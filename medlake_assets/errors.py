"""The base of every error medlake raises on purpose."""

from __future__ import annotations


class MedlakeError(Exception):
    """An error whose message is written for the operator: what is wrong and where, never a record value.

    Each subclass also derives from the built-in error it stands for (ValueError, RuntimeError, ...), so
    callers may catch either; the `medlake` command prints any of them as one line and exits 2.
    """
