"""Gradient diagnostics of two tasks on what they share, accumulated on the device.

Per step, from each task's gradient on the shared rows (Yu et al., "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020): the cosine between the two, whether they conflict
(cosine < 0), their magnitude similarity ``2 |g1| |g2| / (|g1|^2 + |g2|^2)``, each norm and
each task's weight. Sums stay on the device; the epoch means are read once per epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.tasks import TASKS

PREFIX = "mtl"


class GradientDiagnostics(nn.Module):
    """``update`` once per step; ``epoch_means`` (and a reset) once per epoch."""

    def __init__(self, tasks: tuple[str, ...] = tuple(task.name for task in TASKS)):
        super().__init__()
        self.tasks = tuple(tasks)
        self.names = [
            "grad_cosine",
            "grad_conflict_share",
            "grad_magnitude_similarity",
            *(f"grad_norm/{task}" for task in self.tasks),
            *(f"weight/{task}" for task in self.tasks),
        ]
        self.register_buffer("sums", torch.zeros(len(self.names)), persistent=False)
        self.register_buffer("steps", torch.zeros(()), persistent=False)

    def update(self, received: torch.Tensor, weights: torch.Tensor) -> None:
        """``received``: what each task's copy of the shared rows got (its gradient times
        ``weights``), one row per task; the diagnostics are of the unweighted gradients."""
        weights = weights.to(received)
        scale = torch.where(weights > 0, 1.0 / weights.clamp(min=1e-12), 0.0)
        gradients = received * scale.unsqueeze(1)
        self.sums += step_values(gradients, weights)
        self.steps += 1

    def epoch_means(self) -> dict[str, torch.Tensor]:
        """The means since the last call, under ``mtl/...``; then starts afresh."""
        if not bool(self.steps):
            return {}
        means = self.sums / self.steps
        self.sums.zero_()
        self.steps.zero_()
        return {f"{PREFIX}/{name}": value for name, value in zip(self.names, means, strict=True)}


def step_values(gradients: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cosine, conflict (0/1), magnitude similarity, norms and weights of one step."""
    norms = gradients.norm(dim=1)
    dot = (gradients[0] * gradients[1]).sum()
    cosine = dot / (norms[0] * norms[1]).clamp(min=1e-20)
    similarity = 2 * norms[0] * norms[1] / (norms[0] ** 2 + norms[1] ** 2).clamp(min=1e-20)
    head = torch.stack([cosine, (cosine < 0).to(cosine.dtype), similarity])
    return torch.cat([head, norms, weights])
