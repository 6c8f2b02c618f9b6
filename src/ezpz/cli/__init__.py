"""Thin Hydra entry points: compose, convert to dataclasses, call one library function."""
