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
    IMTLG,
    MGDA,
    PCD,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    GramWeighting,
    NashMTL,
    PCGrad,
    UPGrad,
)
from mtrec.mtl.weighting.loss_level import DWA, FAMO, RLW, STCH, GradNorm, Uncertainty
from mtrec.mtl.weighting.magnitude import DBMTL, MetaBalance, MultiBalance

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "IMTLG",
    "MGDA",
    "PCD",
    "RLW",
    "STCH",
    "Aggregation",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "FixedWeighting",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientLevel",
    "GramWeighting",
    "MetaBalance",
    "MultiBalance",
    "NashMTL",
    "PCGrad",
    "SingleTask",
    "UPGrad",
    "Uncertainty",
    "Weighting",
]
