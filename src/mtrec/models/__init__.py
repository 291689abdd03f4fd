"""Recommender networks: plain ``nn.Module``s, kept apart from the training loop."""

from mtrec.models.multitask import MultiTaskNet

__all__ = ["MultiTaskNet"]
