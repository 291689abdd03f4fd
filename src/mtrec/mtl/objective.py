"""The training objective: each task's unweighted loss on a batch, penalties apart.

Kept apart from the weighting (how task losses become gradients, :mod:`mtrec.mtl.weighting`) and
from the Lightning glue, so it can be called, tested and compiled on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec import losses
from mtrec.errors import ConfigError
from mtrec.mtl.tasks import INTERACTION, RATING, tasks_of

PENALTY = "penalty"  # the key of the penalties in the objective's output


class Objective(nn.Module):
    """``objective(net, batch)`` returns ``{task name: loss}`` for the tasks of ``net.heads``,
    plus ``"penalty"`` when a penalty is set.

    - interaction: ``factorization_loss`` of each observed item against its sampled negatives
      (``bounded_bpr`` = mean(1 - sigmoid(p+ - p-)), the reference);
    - rating: mean squared error on the observed pairs; ``negative_rating_ratio > 0`` adds that
      many sampled negatives per pair with rating 0 (pointwise training on implicit feedback);
    - penalty: ``l1`` and ``l2`` on all parameters, and ``embedding_l2`` on the mean squared
      norm of the embedding rows the batch uses (nets with ``embedding_norms``: the SVD
      regulariser).
    """

    def __init__(
        self,
        factorization_loss: str = "bounded_bpr",
        negative_rating_ratio: int = 0,
        l1: float = 0.0,
        l2: float = 0.0,
        embedding_l2: float = 0.0,
    ):
        super().__init__()
        self.factorization_loss = losses.factorization_loss(factorization_loss)
        self.negative_rating_ratio = negative_rating_ratio
        self.l1, self.l2, self.embedding_l2 = l1, l2, embedding_l2

    @staticmethod
    def check_settings(embedding_l2: float, net_class: type) -> None:
        """Settings a net of ``net_class`` cannot honour, checked once: when the module is
        built, and by config validation before any work."""
        if embedding_l2 and not hasattr(net_class, "embedding_norms"):
            raise ConfigError(
                f"model.embedding_l2={embedding_l2}: {net_class.__name__} does not say "
                "which embedding rows a batch uses. Use model.l2 (all parameters) instead."
            )

    def forward(
        self,
        net: nn.Module,
        batch: dict[str, torch.Tensor],
        shared: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``shared``: for each task, its own copy of the rows the tasks share (``net.shared``),
        read by that task's head instead of the tables, so each copy receives that task's
        gradient alone."""
        users, items = batch["users"], batch["items"]
        tasks = tasks_of(net.heads)
        out: dict[str, torch.Tensor] = {}
        if INTERACTION in tasks:
            rows = _rows(shared, INTERACTION.name)
            positive = net.interaction_logits(users, items, **rows)
            negative = net.interaction_logits(
                users.unsqueeze(-1), batch["negatives"], **_user_rows(shared, INTERACTION.name)
            )
            out[INTERACTION.name] = self.factorization_loss(positive, negative)
        if RATING in tasks:
            context = {"history": batch["history"]} if "history" in batch else {}
            context |= _rows(shared, RATING.name)
            predicted, observed = net.ratings(users, items, **context), batch["ratings"]
            if self.negative_rating_ratio:
                negatives = batch["negatives"][:, : self.negative_rating_ratio]
                context = {"history": batch["history"]} if "history" in batch else {}
                context |= _user_rows(shared, RATING.name)
                negative = net.ratings(users.unsqueeze(-1), negatives, **context)
                predicted = torch.cat([predicted, negative.reshape(-1)])
                observed = torch.cat([observed, observed.new_zeros(negative.numel())])
            out[RATING.name] = losses.regression_loss(predicted, observed)
        penalty = 0.0
        if self.embedding_l2:  # only the rows this batch uses, as in SVD
            penalty = penalty + self.embedding_l2 * net.embedding_norms(users, items).mean()
        if self.l1 or self.l2:
            penalty = penalty + losses.penalty(net.parameters(), self.l1, self.l2)
        if isinstance(penalty, torch.Tensor):
            out[PENALTY] = penalty
        return out


def _rows(shared: dict | None, task: str) -> dict:
    """The ``rows=`` argument of a head: that task's copy of the shared rows, if any."""
    rows = (shared or {}).get(task)
    return {"rows": rows} if rows else {}


def _user_rows(shared: dict | None, task: str) -> dict:
    """The ``rows=`` argument for a batch's sampled negatives: the user side of that task's
    copy (keys ``user`` or ``user/...``), one per pair, broadcast over the negatives."""
    rows = {
        key: value.unsqueeze(1)
        for key, value in (shared or {}).get(task, {}).items()
        if key.split("/")[0] == "user"
    }
    return {"rows": rows} if rows else {}
