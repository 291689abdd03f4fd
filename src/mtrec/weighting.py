"""Loss weighting: how the tasks' losses of a step become gradients (``weighting=`` group).

A weighting owns the backward call. ``combine`` gives the scalar whose gradient is taken
(for loss-level strategies a weighted sum, traced into the compiled step with the objective);
``backward`` takes that gradient, and is what a gradient-level strategy overrides. A weighting
is an ``nn.Module``, so learned weights and other state train and travel in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.objective import PENALTY
from mtrec.tasks import TASKS


class Weighting(nn.Module):
    """The interface every strategy implements."""

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar training loss of a step from the objective's output (penalty included)."""
        raise NotImplementedError

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        total: torch.Tensor,
        backward: Callable[[torch.Tensor], None],
    ) -> None:
        """Turn a step's losses into gradients; ``backward`` is ``loss.backward`` or
        Lightning's ``manual_backward`` (hooks, mixed precision, DDP)."""
        backward(total)

    def effective_weights(self) -> dict[str, float]:
        """Each task's current weight, for logs and summaries."""
        return {}


class FixedWeighting(Weighting):
    """Constant weights: ``sum_t w_t * L_t + penalty``. The reference study's
    ``λF · interaction + λR · rating`` (``model.factorization_weight`` and
    ``model.regression_weight``)."""

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        known = {task.name for task in TASKS}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ConfigError(
                f"weighting.weights has {', '.join(unknown)}, which is not a task: "
                f"use {', '.join(sorted(known))}."
            )
        self.weights = {name: float(weight) for name, weight in weights.items()}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for task in TASKS:  # in task order: the sum the reference computes
            if task.name in losses:
                total = total + self.weights.get(task.name, 0.0) * losses[task.name]
        if PENALTY in losses:
            total = total + losses[PENALTY]
        return total

    def effective_weights(self) -> dict[str, float]:
        return dict(self.weights)
