"""Runnable experiments (`python -m experiments.train`, `.sweep`, `.devices`): configs, I/O, plots."""
