"""Loss weighting: how the tasks' losses of a step become gradients (``weighting=`` group).

Loss-level strategies (:mod:`.loss_level`) weight the task losses; gradient-level ones
combine the tasks' gradients on what the tasks share (:mod:`.gram`: solved on their Gram
matrix; :mod:`.gradient`: any TorchJD aggregator), and :mod:`.magnitude`'s balance their
magnitudes there. All are
:class:`Weighting` modules, so their state trains and travels in checkpoints.
"""

from mtrec.mtl.weighting.base import FixedWeighting, SingleTask, Weighting
from mtrec.mtl.weighting.gradient import Aggregation, GradientLevel
from mtrec.mtl.weighting.gram import (
    MGDA,
    PCD,
    CAGrad,
    ConFIG,
    FairGrad,
    GradDrop,
    GramWeighting,
    NashMTL,
    PCGrad,
)
from mtrec.mtl.weighting.loss_level import DWA, FAMO, RLW, STCH, GradNorm, Uncertainty
from mtrec.mtl.weighting.magnitude import DBMTL, MetaBalance, MultiBalance

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "MGDA",
    "PCD",
    "RLW",
    "STCH",
    "Aggregation",
    "CAGrad",
    "ConFIG",
    "FairGrad",
    "FixedWeighting",
    "GradDrop",
    "GradNorm",
    "GradientLevel",
    "GramWeighting",
    "MetaBalance",
    "MultiBalance",
    "NashMTL",
    "PCGrad",
    "SingleTask",
    "Uncertainty",
    "Weighting",
]
