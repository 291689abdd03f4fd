"""mtrec: a Lightning + Hydra template for multi-task recommendation."""

__version__ = "0.1.0"
