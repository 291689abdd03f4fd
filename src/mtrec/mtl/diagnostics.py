"""Gradient diagnostics of two tasks on what they share, accumulated on the device.

Per step, from each task's gradient on the shared rows (Yu et al., "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020): the cosine between the two, whether they conflict
(cosine < 0), their magnitude similarity ``2 |g1| |g2| / (|g1|^2 + |g2|^2)``, each norm and
each task's weight. Sums stay on the device; the epoch means are read once per epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.mtl.tasks import TASKS

PREFIX = "mtl"


class GradientDiagnostics(nn.Module):
    """``update`` once per step; ``epoch_means`` (and a reset) once per epoch.

    A step keeps the 2 x 2 Gram matrix of what the tasks' copies of the shared rows received
    (computed once, for the strategy too) and the weights, on the device; the cosines,
    conflicts and norms of all the epoch's steps are computed together when the epoch ends.
    """

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
        self.steps: list[torch.Tensor] = []

    def update(
        self,
        gram: torch.Tensor,
        weights: torch.Tensor,
        effective: torch.Tensor | None = None,
    ) -> None:
        """``gram``: the Gram matrix of what each task's copy of the shared rows got (its
        gradient times ``weights``); the diagnostics are of the unweighted gradients.
        ``effective``: the weight each task's gradient got in the end (default ``weights``),
        e.g. loss weight times a gradient-level strategy's weight."""
        effective = weights if effective is None else effective
        self.steps.append(torch.cat([gram.reshape(-1), weights.to(gram), effective.to(gram)]))

    def epoch_means(self) -> dict[str, torch.Tensor]:
        """The means since the last call, under ``mtl/...``; then starts afresh."""
        if not self.steps:
            return {}
        rows, self.steps = torch.stack(self.steps), []
        tasks = len(self.tasks)
        gram = rows[:, : tasks * tasks].view(-1, tasks, tasks)
        weights, effective = rows[:, tasks * tasks :].split(tasks, dim=1)
        scale = torch.where(weights > 0, 1.0 / weights.clamp(min=1e-12), 0.0)
        gram = gram * scale.unsqueeze(2) * scale.unsqueeze(1)  # of the unweighted gradients
        means = step_values(gram, effective).mean(0)  # every step at once
        return {f"{PREFIX}/{name}": value for name, value in zip(self.names, means, strict=True)}


def step_values(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cosine, conflict (0/1), magnitude similarity, norms and weights of a step from the Gram
    matrix of its two task gradients; of many steps at once with leading dimensions."""
    squares = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0)
    norms = squares.sqrt()
    product = norms[..., 0] * norms[..., 1]
    cosine = gram[..., 0, 1] / product.clamp(min=1e-20)
    similarity = 2 * product / (squares[..., 0] + squares[..., 1]).clamp(min=1e-20)
    head = torch.stack([cosine, (cosine < 0).to(cosine.dtype), similarity], dim=-1)
    return torch.cat([head, norms, weights.to(head)], dim=-1)
