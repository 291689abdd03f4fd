"""Loss weighting: how the tasks' losses of a step become gradients (``weighting=`` group).

Loss-level strategies (:mod:`.loss_level`) weight the task losses; gradient-level ones
(:mod:`.gradient`, TorchJD's aggregators) combine the tasks' gradients on what the tasks share,
and :mod:`.magnitude`'s balance their magnitudes there. All are
:class:`Weighting` modules, so their state trains and travels in checkpoints.
"""

from mtrec.mtl.weighting.base import FixedWeighting, SingleTask, Weighting
from mtrec.mtl.weighting.gradient import Aggregation
from mtrec.mtl.weighting.loss_level import DWA, FAMO, RLW, STCH, GradNorm, Uncertainty
from mtrec.mtl.weighting.magnitude import DBMTL, MetaBalance, MultiBalance

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "RLW",
    "STCH",
    "Aggregation",
    "FixedWeighting",
    "GradNorm",
    "MetaBalance",
    "MultiBalance",
    "SingleTask",
    "Uncertainty",
    "Weighting",
]
