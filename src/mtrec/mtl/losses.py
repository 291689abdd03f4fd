"""Factorization (implicit-feedback) and regression losses.

Factorization losses take the logits of observed items ``positive`` of shape (B,) and of
sampled items ``negative`` of shape (B, K); each (positive, negative) pair counts once. For
the losses in :data:`CATALOGUE` ``negative`` is every item's logit, (B, num_items).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mtrec.errors import ConfigError


def bounded_bpr(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The reference loss: ``mean(1 - sigmoid(p+ - p-))``, bounded in (0, 1)."""
    return (1.0 - torch.sigmoid(positive.unsqueeze(-1) - negative)).mean()


def bpr(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: ``mean(-log sigmoid(p+ - p-))``."""
    return F.softplus(negative - positive.unsqueeze(-1)).mean()


def bce(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Pointwise binary cross-entropy: observed items labelled 1, sampled items 0.

    Each of the B x K negatives weighs as much as the B positives together (mean of each part).
    """
    return F.softplus(-positive).mean() + F.softplus(negative).mean()


def hinge(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Pairwise hinge with margin 1: ``mean(max(0, 1 - (p+ - p-)))``."""
    return torch.clamp(1.0 - (positive.unsqueeze(-1) - negative), min=0.0).mean()


def adaptive_hinge(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Hinge against the highest-scored of the K negatives: ``mean(max(0, 1 - (p+ - max p-)))``."""
    return torch.clamp(1.0 - (positive - negative.max(dim=-1).values), min=0.0).mean()


def softmax(positive: torch.Tensor, catalogue: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the observed item over the whole catalogue:
    ``mean(log sum_j exp(s_uj) - s_u+)``, ``catalogue`` every item's logit (the observed one
    among them). The retrieval standard where the catalogue fits one matrix product (Covington
    et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016)."""
    return (torch.logsumexp(catalogue, dim=-1) - positive).mean()


def sampled_softmax(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the observed item among itself and its K sampled items:
    ``mean(log(exp(s+) + sum_k exp(s_k)) - s+)``. With negatives drawn from Q, the logits come
    in corrected, ``s - log Q(item)`` (the interaction task subtracts it), and the loss's
    gradient tends to the full softmax's as K grows (Bengio and Senécal, "Adaptive Importance
    Sampling to Accelerate Training of a Neural Probabilistic Language Model", IEEE TNN 2008;
    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
    Recommendations", RecSys 2019). Uniform Q needs no correction: it shifts every logit alike."""
    logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1)
    return (torch.logsumexp(logits, dim=-1) - positive).mean()


FACTORIZATION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bounded_bpr": bounded_bpr,
    "bpr": bpr,
    "bce": bce,
    "hinge": hinge,
    "adaptive_hinge": adaptive_hinge,
    "softmax": softmax,
    "sampled_softmax": sampled_softmax,
}
CATALOGUE = frozenset({"softmax"})  # the losses whose negatives are every item
CORRECTED = frozenset({"sampled_softmax"})  # the losses that read logits less log Q(item)


def factorization_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss called ``name``; the one check of ``model.factorization_loss``."""
    try:
        return FACTORIZATION_LOSSES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"model.factorization_loss={name} is not valid: use one of "
            f"{', '.join(FACTORIZATION_LOSSES)}."
        ) from None


def regression_loss(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted ratings."""
    return F.mse_loss(predicted, observed)


def penalty(parameters, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor | float:
    """``l1 * sum|w| + l2 * sum w^2`` over ``parameters`` (0 when both weights are 0)."""
    total = 0.0
    for weight in parameters:
        if l1:
            total = total + l1 * weight.abs().sum()
        if l2:
            total = total + l2 * weight.pow(2).sum()
    return total
