"""Gradient diagnostics of the tasks on what they share, accumulated on the device.

Per step, from each task's gradient on the shared rows (Yu et al., "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020), for every pair of tasks ``a-b``: the cosine between
their gradients, whether they conflict (cosine < 0) and their magnitude similarity
``2 |g1| |g2| / (|g1|^2 + |g2|^2)``; for every task its gradient's norm and its weight. Sums
stay on the device; the epoch means are read once per epoch.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

PREFIX = "mtl"
PAIRWISE = ("grad_cosine", "grad_conflict_share", "grad_magnitude_similarity")


def pairs(tasks: tuple[str, ...]) -> list[tuple[int, int]]:
    """Every pair of tasks (by index), in task order."""
    return list(combinations(range(len(tasks)), 2))


class GradientDiagnostics(nn.Module):
    """``update`` once per step; ``epoch_means`` (and a reset) once per epoch.

    A step keeps the K x K Gram matrix of what the tasks' copies of the shared rows received
    (computed once, for the strategy too) and the weights, on the device; the cosines,
    conflicts and norms of all the epoch's steps are computed together when the epoch ends.
    Names: ``mtl/grad_cosine/<a>-<b>`` (and the other pairwise values) per pair,
    ``mtl/grad_norm/<task>`` and ``mtl/weight/<task>`` per task.
    """

    def __init__(self, tasks: tuple[str, ...] = ("interaction", "rating")):
        super().__init__()
        self.tasks = tuple(tasks)
        self.pairs = pairs(self.tasks)
        named = [f"{self.tasks[i]}-{self.tasks[j]}" for i, j in self.pairs]
        self.names = [
            *(f"{value}/{pair}" for value in PAIRWISE for pair in named),
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
        means = step_values(gram, effective, self.pairs).mean(0)  # every step at once
        return {f"{PREFIX}/{name}": value for name, value in zip(self.names, means, strict=True)}


def step_values(
    gram: torch.Tensor, weights: torch.Tensor, task_pairs: list[tuple[int, int]] | None = None
) -> torch.Tensor:
    """Per pair (cosine, conflict 0/1, magnitude similarity), then per task (norm, weight)
    of a step from the Gram matrix of its task gradients; of many steps at once with leading
    dimensions. ``task_pairs``: index pairs, default every pair."""
    task_pairs = pairs(tuple(range(gram.shape[-1]))) if task_pairs is None else task_pairs
    squares = gram.diagonal(dim1=-2, dim2=-1).clamp(min=0)
    norms = squares.sqrt()
    first = torch.tensor([i for i, _ in task_pairs], device=gram.device)
    second = torch.tensor([j for _, j in task_pairs], device=gram.device)
    product = norms[..., first] * norms[..., second]
    cosine = gram[..., first, second] / product.clamp(min=1e-20)
    similarity = 2 * product / (squares[..., first] + squares[..., second]).clamp(min=1e-20)
    head = torch.cat([cosine, (cosine < 0).to(cosine.dtype), similarity], dim=-1)
    return torch.cat([head, norms, weights.to(head)], dim=-1)
