"""Rating models built on a dot product of user and item factors."""

from __future__ import annotations

import torch

from mtrec.data.info import DataInfo
from mtrec.models.embeddings import GenreBag, ScaledEmbedding, ZeroEmbedding, embedding_size
from mtrec.models.protocol import Recommender


class MatrixFactorization(Recommender):
    """Plain matrix factorization trained on ratings: ``r = u . q``."""

    head_kinds = ("score",)  # its one head, for any task asking for a score

    def __init__(self, data: DataInfo, embedding_dim: int | str = 32):
        super().__init__()
        num_users, num_items = data.num_users, data.num_items
        dim = embedding_size(embedding_dim, max(num_users, num_items))
        self.user_embeddings = ScaledEmbedding(num_users, dim)
        self.item_embeddings = ScaledEmbedding(num_items, dim)

    def item_factors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embeddings(items)

    def head(self, task: str):
        return self.ratings

    def ratings(self, users, items, rows=None, history=None) -> torch.Tensor:
        return (self.user_embeddings(users) * self.item_factors(items)).sum(-1)

    def item_vectors(self) -> torch.Tensor:
        return self.item_factors(torch.arange(self.item_embeddings.num_embeddings))


class GenreMatrixFactorization(MatrixFactorization):
    """Matrix factorization whose item factor adds the mean embedding of the item's genres."""

    def __init__(self, data: DataInfo, embedding_dim=32):
        super().__init__(data, embedding_dim)
        genres = data.require("item_genres", type(self).__name__)
        self.genres = GenreBag(genres, self.item_embeddings.embedding_dim)

    def item_factors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embeddings(items) + self.genres(items)


class BiasedDotProduct(MatrixFactorization):
    """``sigmoid(u . q + b_u + b_i) * (high - low) + low``: ratings squashed into a range.

    The range is a little wider than the rating scale (0 to 5.5 for 1-5 stars) so that the
    extreme ratings are reachable without saturating the sigmoid.
    """

    def __init__(self, data: DataInfo, embedding_dim=32, rating_range=(0.0, 5.5)):
        super().__init__(data, embedding_dim)
        self.user_biases = ZeroEmbedding(data.num_users, 1)
        self.item_biases = ZeroEmbedding(data.num_items, 1)
        self.low, self.high = (float(x) for x in rating_range)

    def ratings(self, users, items, rows=None, history=None) -> torch.Tensor:
        dot = super().ratings(users, items)
        logit = dot + self.user_biases(users).squeeze(-1) + self.item_biases(items).squeeze(-1)
        return torch.sigmoid(logit) * (self.high - self.low) + self.low
