"""Fixtures of the chart tests; the helpers live in chartlib.py."""

from chartlib import helm, shared_dir  # noqa: F401  (pytest fixtures)
