"""The weighting interface, and fixed weights (the reference study's).

A weighting owns the backward call of a step. ``combine`` gives the scalar whose gradient is
taken (traced into the compiled step with the objective) and may record the weight each task
got under ``losses["weights"]``. When the module hands ``backward`` each task's own copy of
what the tasks share (:class:`mtrec.mtl.shared.TaskCopies`), the gradients the copies received
are combined by :meth:`Weighting.shared_gradient` and sent on to the shared part: the sum
for loss-level strategies (what one backward would give), another combination for
gradient-level ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.mtl.objective import PENALTY
from mtrec.mtl.shared import TaskCopies
from mtrec.mtl.tasks import TASKS

WEIGHTS = "weights"  # where combine records each task's weight, in TASKS order


class Weighting(nn.Module):
    """The interface every strategy implements."""

    #: True when the strategy needs each task's gradient on the shared rows to train
    #: (gradient-level strategies, GradNorm); others get them only for diagnostics.
    task_gradients = False
    #: the weight of each task's received gradient in the last ``shared_gradient``, where a
    #: strategy computes one (most gradient-level ones); ``None``: they are summed
    step_weights: torch.Tensor | None = None

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar training loss of a step from the objective's output (penalty included)."""
        raise NotImplementedError

    def shared_gradient(
        self, received: torch.Tensor, gram: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The gradient for the shared rows from what each task's copy received, one row per
        task (each task's gradient times the weight ``combine`` gave it); ``gram``: their Gram
        matrix, if already computed."""
        return received.sum(0)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        total: torch.Tensor,
        backward: Callable[[torch.Tensor], None],
        copies: TaskCopies | None = None,
    ) -> torch.Tensor | None:
        """Turn a step's losses into gradients; ``backward`` is ``loss.backward`` or
        Lightning's ``manual_backward``. With ``copies`` (each task's copy of what the tasks
        share), returns what each copy received, one row per task in TASKS order."""
        backward(total)
        if copies is None:
            return None
        copies.send(self.shared_gradient(copies.received, copies.gram))
        return copies.received

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called once per epoch with each task's mean loss (strategies that keep histories)."""

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to renormalise learned weights)."""

    def effective_weights(self) -> dict[str, float]:
        """Each task's weight, for strategies whose ``combine`` does not record them."""
        return {}

    def logged(self) -> dict[str, torch.Tensor]:
        """The strategy's own values to log each epoch under ``mtl/`` (learned parameters)."""
        return {}

    def check(self, tasks: tuple[str, ...], shares: bool) -> None:
        """One clear error, before training, for a net this strategy cannot serve."""


class FixedWeighting(Weighting):
    """Constant weights: ``sum_t w_t * L_t + penalty``. The reference study's
    ``λF · interaction + λR · rating`` (``model.factorization_weight`` and
    ``model.regression_weight``); one weight may be null: 1 minus the others."""

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        known = {task.name for task in TASKS}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ConfigError(
                f"weighting.weights has {', '.join(unknown)}, which is not a task: "
                f"use {', '.join(sorted(known))}."
            )
        unset = [name for name, weight in weights.items() if weight is None]
        given = sum(float(weight) for weight in weights.values() if weight is not None)
        # a weight left unset (null) is what the others leave of 1: λR = 1 - λF
        self.weights = {
            name: (1.0 - given if weight is None else float(weight))
            for name, weight in weights.items()
        }
        if len(unset) > 1:
            raise ConfigError(
                f"weighting.weights: {', '.join(unset)} are all null; give all but one a value."
            )

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
