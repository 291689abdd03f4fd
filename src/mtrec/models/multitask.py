"""MultiTaskNet: a factorization head for interactions and an MLP head for ratings."""

from __future__ import annotations

import torch
from torch import nn

from mtrec.models.embeddings import ScaledEmbedding, ZeroEmbedding, embedding_size


class MultiTaskNet(nn.Module):
    """Two heads over user and item embeddings.

    - interaction head (matrix factorization): ``p_ij = u_i . q_j + b_j``
    - rating head (MLP): ``[u_i, q_j, u_i * q_j] -> Linear -> ReLU -> ... -> Linear(., 1)``

    With ``embedding_sharing`` both heads read one (U, Q) pair; otherwise each head has its
    own pair. The item bias always belongs to the interaction head. There is no user bias:
    it cannot change a user's ranking. With ``embedding_dim="auto"`` the size follows the rule
    of thumb for the larger vocabulary and the first layer size follows it (3 * size).
    """

    heads = ("interaction", "rating")

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int | str = 32,
        layer_sizes: tuple[int, ...] = (96, 64),
        embedding_sharing: bool = True,
    ):
        super().__init__()
        if embedding_dim == "auto":
            embedding_dim = embedding_size("auto", max(num_users, num_items))
            layer_sizes = (3 * embedding_dim, *layer_sizes[1:])
        embedding_dim = embedding_size(embedding_dim, max(num_users, num_items))
        if layer_sizes[0] != 3 * embedding_dim:
            raise ValueError(
                f"model.layer_sizes[0]={layer_sizes[0]} must equal 3 * model.embedding_dim "
                f"= {3 * embedding_dim} (the MLP input is [u, q, u * q])."
            )
        self.num_users, self.num_items = num_users, num_items
        self.embedding_sharing = embedding_sharing
        self.user_embeddings = ScaledEmbedding(num_users, embedding_dim)
        self.item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        self.item_biases = ZeroEmbedding(num_items, 1)
        if embedding_sharing:
            self.rating_user_embeddings = self.user_embeddings
            self.rating_item_embeddings = self.item_embeddings
        else:
            self.rating_user_embeddings = ScaledEmbedding(num_users, embedding_dim)
            self.rating_item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(layer_sizes[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def interaction_logits(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``u . q + b`` for broadcastable id tensors, e.g. (B, 1) users x (B, K) items."""
        users = self.user_embeddings(user_ids)
        items = self.item_embeddings(item_ids)
        return (users * items).sum(-1) + self.item_biases(item_ids).squeeze(-1)

    def ratings(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        users = self.rating_user_embeddings(user_ids)
        items = self.rating_item_embeddings(item_ids)
        return self.mlp(torch.cat([users, items, users * items], dim=-1)).squeeze(-1)

    def forward(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (interaction logits, predicted ratings), each of shape ``user_ids.shape``."""
        return self.interaction_logits(user_ids, item_ids), self.ratings(user_ids, item_ids)

    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Interaction logits of every item for each user: shape (len(user_ids), num_items)."""
        users = self.user_embeddings(user_ids)
        # one fused multiply-add: no second users x items buffer for the bias
        return torch.addmm(self.item_biases.weight.T, users, self.item_embeddings.weight.T)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embeddings.weight
