"""Gradient-level strategies: combine the tasks' gradients on what the tasks share.

Each task's loss sends its gradient to its own copy of the shared rows (never the whole
embedding tables, so the cost grows with the batch, not the catalogue); a strategy turns the
rows (one per task, any number of tasks) into the one gradient the shared rows get.
Task-specific parameters get their own task's gradient. :class:`GradientLevel` is what they
share; :class:`Aggregation` runs any aggregator of TorchJD (Quinton and Rey, "Jacobian Descent
for Multi-Objective Optimization", 2024), chosen by ``_target_``; :mod:`.gram` solves the
classic ones on the Gram matrix at the cost of a step.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.mtl.weighting.base import Weighting, check_several_tasks

log = logging.getLogger(__name__)

EXTRA = "pip install 'mtrec[mtl]'"  # what `make install` does
# Aggregators whose solvers live in optional packages: the packages they import.
NEEDS = {
    "UPGrad": ("quadprog", "qpsolvers"),
    "DualProj": ("quadprog", "qpsolvers"),
    "CAGrad": ("cvxpy",),
    "NashMTL": ("cvxpy", "ecos"),
    "FairGrad": ("scipy",),
}


def check_aggregator(target: str) -> None:
    """One clear error, before any work, when an aggregator's solver is not installed."""
    name = target.rsplit(".", 1)[-1]
    missing = [m for m in NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("torchjd") is None:
        missing = ["torchjd", *missing]
    if missing:
        raise ConfigError(
            f"weighting.aggregator={target} needs {', '.join(missing)}, which is not installed. "
            f"Fix: {EXTRA} (the optional extra with the solvers of every strategy)."
        )


class GradientLevel(Weighting):
    """A strategy that combines the tasks' gradients on what the tasks share (one row per
    task). With nothing shared (separate embeddings) there is nothing to combine: the log
    says so once and training goes on with the sum. The step's loss is the plain sum of the
    task losses (and penalties): task-specific parameters get each task's own gradient."""

    task_gradients = True

    def __init__(self) -> None:
        super().__init__()
        self.warned = False

    def after_backward(
        self, received: torch.Tensor | None, losses: Mapping[str, torch.Tensor]
    ) -> None:
        if received is None and not self.warned:
            log.warning(
                "weighting=%s: the tasks share nothing here (separate embeddings), so there are "
                "no gradients to combine; training on the sum of the task losses",
                self.name,
            )
            self.warned = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def check(self, tasks: tuple[str, ...], shares: bool) -> None:
        check_several_tasks(tasks, f"weighting with {self.name} combines the gradients of")


class Aggregation(GradientLevel):
    """``aggregator`` (a TorchJD aggregator) combines the tasks' gradients on the shared rows."""

    def __init__(self, aggregator: nn.Module):
        super().__init__()
        self.aggregator = aggregator
        from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator

        # what the aggregator's weights read: the Gramian of the rows, the rows, or neither
        self.weights_read = (
            "gramian"
            if isinstance(aggregator, GramianWeightedAggregator)
            else "rows"
            if isinstance(aggregator, WeightedAggregator)
            else None
        )

    @property
    def name(self) -> str:
        return type(self.aggregator).__name__

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor | None:
        """Most of TorchJD's aggregators weight the rows: their weighting is called directly,
        on the K x K Gramian where it reads only that (what the aggregator would do, minus its
        own checks: a tenth of a step), so the weights each task got can be logged."""
        if self.weights_read == "gramian":
            return self.aggregator.gramian_weighting(gram)
        if self.weights_read == "rows":
            return self.aggregator.weighting(received)
        return None

    def shared_gradient(self, received: torch.Tensor, gram: torch.Tensor, parts=()):
        if self.weights_read is None:  # an aggregator that does not weight the rows
            return self.aggregator(received), None
        return super().shared_gradient(received, gram)
