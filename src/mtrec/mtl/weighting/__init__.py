"""Loss weighting: how the tasks' losses of a step become gradients (``weighting=`` group).

Loss-level strategies (:mod:`.loss_level`) weight the task losses; gradient-level ones
(:mod:`.gradient`) combine the tasks' gradients on what the tasks share. All are
:class:`Weighting` modules, so their state trains and travels in checkpoints.
"""

from mtrec.mtl.weighting.base import FixedWeighting, SingleTask, Weighting
from mtrec.mtl.weighting.gradient import Aggregation
from mtrec.mtl.weighting.loss_level import DWA, RLW, GradNorm, Uncertainty

__all__ = [
    "DWA",
    "RLW",
    "Aggregation",
    "FixedWeighting",
    "GradNorm",
    "SingleTask",
    "Uncertainty",
    "Weighting",
]
