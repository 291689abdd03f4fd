"""Single-task baselines the multi-task model is measured against.

``Popularity`` and ``EASE`` are fitted in closed form when they are built (from the training
part only: validation and test rows are never seen) and have nothing to train;
``BiasedMatrixFactorization`` is the classic rating baseline (SVD-style), trained as usual.
"""

from __future__ import annotations

import torch

from mtrec.data.info import DataInfo
from mtrec.data.interactions import rated
from mtrec.errors import ConfigError
from mtrec.models.embeddings import ScaledEmbedding, ZeroEmbedding, embedding_size
from mtrec.models.neighbours import ease_weights
from mtrec.models.protocol import EmbeddingNorms, Ranker, Recommender


class Popularity(Recommender, Ranker):
    """Ranks every item by its number of training interactions, the same for every user."""

    head_kinds = ("ranking",)  # its one head, for any task asking for a ranking

    def __init__(self, data: DataInfo):
        super().__init__()
        train = data.require("train", "Popularity")
        counts = torch.bincount(train.items, minlength=data.num_items).to(torch.float32)
        self.register_buffer("counts", counts)
        self.num_items = data.num_items

    def head(self, task: str):
        return self.interaction_logits

    def interaction_logits(self, user_ids, item_ids, rows=None, history=None) -> torch.Tensor:
        shape = torch.broadcast_shapes(user_ids.shape, item_ids.shape)
        return self.counts[item_ids].expand(shape)

    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(user_ids), -1).clone()

    def item_vectors(self) -> torch.Tensor:
        return self.counts.unsqueeze(1)


class EASE(Recommender, Ranker):
    """Embarrassingly Shallow Autoencoder (Steck, 2019): scores ``x_u B`` where ``x_u`` is the
    user's row of the binary training matrix X and, with ``P = (X^T X + reg I)^-1``,
    ``B = I - P / diag(P)`` (zero diagonal: an item never recommends itself).

    ``reg`` is the one hyperparameter; choose it on a validation carve-out. B is items x items,
    so memory grows with the square of the catalogue (``max_items`` guards against ML-25M's
    59,047 items, which would need 14 GB).
    """

    head_kinds = ("ranking",)  # its one head, for any task asking for a ranking

    def __init__(
        self,
        data: DataInfo,
        reg: float = 300.0,
        max_items: int = 30_000,
    ):
        super().__init__()
        num_users, num_items, train = data.num_users, data.num_items, data.require("train", "EASE")
        self.num_items = num_items
        if num_items > max_items:
            raise ConfigError(
                f"model=ease needs an items x items matrix: {num_items} items would take "
                f"{num_items**2 * 8 / 1e9:.1f} GB to fit. It is meant for catalogues of up to "
                f"{max_items} items (ML-100K, ML-1M); use another model for this one."
            )
        x = rated(train, num_users, num_items)
        self.register_buffer("interactions", x)
        self.register_buffer("weights", ease_weights(x, reg))

    def head(self, task: str):
        return self.interaction_logits

    def interaction_logits(self, user_ids, item_ids, rows=None, history=None) -> torch.Tensor:
        return (self.interactions[user_ids] * self.weights.T[item_ids]).sum(-1)

    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        return self.interactions[user_ids] @ self.weights

    def item_vectors(self) -> torch.Tensor:
        return self.weights.T


class BiasedMatrixFactorization(Recommender, EmbeddingNorms):
    """Rating baseline: ``r = mu + b_u + b_i + u . q``, ``mu`` the training mean rating.

    With ``model.embedding_l2`` (a penalty on the rows each batch uses) this is the classic
    regularised SVD of the rating-prediction literature.
    """

    head_kinds = ("score",)  # its one head, for any task asking for a score

    def __init__(self, data: DataInfo, embedding_dim: int | str = 32):
        super().__init__()
        num_users, num_items = data.num_users, data.num_items
        train = data.require("train", "BiasedMatrixFactorization")
        dim = embedding_size(embedding_dim, max(num_users, num_items))
        self.user_embeddings = ScaledEmbedding(num_users, dim)
        self.item_embeddings = ScaledEmbedding(num_items, dim)
        self.user_biases = ZeroEmbedding(num_users, 1)
        self.item_biases = ZeroEmbedding(num_items, 1)
        self.register_buffer("mean_rating", train.ratings.mean())

    def head(self, task: str):
        return self.ratings

    def ratings(self, user_ids, item_ids, rows=None, history=None) -> torch.Tensor:
        dot = (self.user_embeddings(user_ids) * self.item_embeddings(item_ids)).sum(-1)
        biases = self.user_biases(user_ids).squeeze(-1) + self.item_biases(item_ids).squeeze(-1)
        return self.mean_rating + biases + dot

    def embedding_norms(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, task: str | None = None
    ) -> torch.Tensor:  # one head: every row is the task's
        """Squared norms of the rows each (user, item) pair uses: the SVD regulariser."""
        tables = [
            (self.user_embeddings, user_ids),
            (self.item_embeddings, item_ids),
            (self.user_biases, user_ids),
            (self.item_biases, item_ids),
        ]
        return sum(table(ids).pow(2).sum(-1) for table, ids in tables)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embeddings.weight
