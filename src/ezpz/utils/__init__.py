"""Compatibility modules for the original ezpz tools."""
