"""Drivers that fail to load, each in its own way (see pyproject.toml)."""
