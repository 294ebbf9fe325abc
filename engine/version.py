"""The engine's version (recorded in autotune cache headers)."""

__version__ = "0.1.0"
