"""Embedding tables shared by the models, and the embedding-size rule of thumb."""

from __future__ import annotations

import torch
from torch import nn

from mtrec.errors import ConfigError


class ScaledEmbedding(nn.Embedding):
    """Embedding initialised from N(0, 1/d): small dot products at the start of training."""

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 1.0 / self.embedding_dim)
        self._fill_padding_idx_with_zero()


class ZeroEmbedding(nn.Embedding):
    """Embedding initialised to zero, used for biases."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


def embedding_size(setting: int | str, num_categories: int) -> int:
    """``setting`` itself, or for ``"auto"`` the rule of thumb ``min(600, round(1.6 n^0.56))``;
    the one check of ``model.net.embedding_dim``."""
    if setting == "auto":
        return min(600, round(1.6 * num_categories**0.56))
    if isinstance(setting, int) and not isinstance(setting, bool) and setting > 0:
        return setting
    raise ConfigError(
        f"model.net.embedding_dim={setting} is not valid: use a positive integer or auto."
    )


class GenreBag(nn.Module):
    """The mean of an item's genre embeddings (an embedding bag over its genres).

    ``item_genres`` is (num_items, max_genres) of genre ids ``1..G``, padded with 0.
    """

    def __init__(self, item_genres: torch.Tensor, embedding_dim: int):
        super().__init__()
        self.register_buffer("item_genres", item_genres.long(), persistent=False)
        num_genres = int(item_genres.max()) + 1
        self.bag = nn.EmbeddingBag(num_genres, embedding_dim, mode="mean", padding_idx=0)
        nn.init.normal_(self.bag.weight, 0.0, 1.0 / embedding_dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        flat = self.item_genres[items.reshape(-1)]
        return self.bag(flat).reshape(*items.shape, -1)
