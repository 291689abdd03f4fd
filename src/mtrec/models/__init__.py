"""Recommender networks: plain ``nn.Module``s, kept apart from the training loop.

Every network takes a :class:`~mtrec.data.info.DataInfo` as its first argument and declares
its ``heads``: ``"interaction"`` (it has ``interaction_logits`` and ``score_all_items``) and/or
``"rating"`` (it has ``ratings``). All have ``item_vectors()``. A net with both heads says what
its tasks share for a batch with ``shared(user_ids, item_ids)``: a dict of
:class:`~mtrec.mtl.shared.TableRows` (embedding rows) or tensors (a shared layer's output), empty
when the heads share nothing.
"""

from mtrec.models.baselines import EASE, BiasedMatrixFactorization, Popularity
from mtrec.models.dense import DenseNet, GenreDenseNet
from mtrec.models.factorization import (
    BiasedDotProduct,
    GenreMatrixFactorization,
    MatrixFactorization,
)
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
    "MultiTaskNet",
    "SequenceLSTM",
]
