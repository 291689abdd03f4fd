"""Recommender networks: plain ``nn.Module``s, kept apart from the training loop.

Every network takes a :class:`~mtrec.data.info.DataInfo` as its first argument and follows
:mod:`mtrec.models.protocol`: a :class:`~mtrec.models.protocol.Recommender` with its heads
keyed by task name (``head(task)``, one call signature), and the capabilities it declares by
inheriting them (ranking the catalogue, what its tasks share for a batch, embedding norms,
gates). :class:`MultiTaskNet` is composed of named parts: a mixer (:mod:`mtrec.models.mixers`,
what the tasks share) and a head per task (:mod:`mtrec.models.heads`), reading ids through an
encoder (:mod:`mtrec.models.encoders`).
"""

from mtrec.models.baselines import EASE, BiasedMatrixFactorization, Popularity
from mtrec.models.dense import DenseNet, GenreDenseNet
from mtrec.models.factorization import (
    BiasedDotProduct,
    GenreMatrixFactorization,
    MatrixFactorization,
)
from mtrec.models.mixers import Mixer, Tables
from mtrec.models.multitask import MultiTaskNet
from mtrec.models.sequence import SequenceLSTM

__all__ = [
    "EASE",
    "BiasedMatrixFactorization",
    "Popularity",
    "BiasedDotProduct",
    "DenseNet",
    "GenreDenseNet",
    "GenreMatrixFactorization",
    "MatrixFactorization",
    "Mixer",
    "MultiTaskNet",
    "Tables",
    "SequenceLSTM",
]
