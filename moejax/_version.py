"""The package version (setup.cfg reads it from here without importing moejax)."""

__version__ = "0.2.0.dev0"
