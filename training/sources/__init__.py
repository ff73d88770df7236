"""Data sources. Each returns a list of `Series` on a regular grid; see `base` for the policy."""
from .base import Series, regularize

__all__ = ["Series", "regularize"]
