"""The package version (its own module so any layer may read it without importing the public API)."""
__version__ = "0.1.0"
