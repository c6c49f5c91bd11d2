"""Error classes that the command line classifies before (or without) importing torch."""

from __future__ import annotations


class WeightsError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""
