"""How collapsed a task's vectors are: effective rank and information abundance.

Both read the singular values σ₁ ≥ … ≥ σ_d of the n × d matrix of the vectors a task reads
(every user's, or every item's; uncentred, as the dot product uses them). A shared map that
every id passes through can drift to a few directions and take the ranking head with it
(the popularity direction, under uniform negatives); free per-id rows cannot. These numbers
show it while training runs (``mtl/effective_rank/<side>/<task>``, ``mtl/abundance/...``).

The singular values come from the d × d Gram matrix (``VᵀV``: its eigenvalues are σᵢ²), so
the cost is one n × d × d product and a d × d eigenproblem, on the vectors' device.
"""

from __future__ import annotations

import torch

TINY = 1e-300  # float64


def singular_values(vectors: torch.Tensor) -> torch.Tensor:
    """σ₁ ≥ … ≥ σ_d of an n × d matrix, from its Gram matrix in float64 (the small ones stay
    accurate enough for the entropy below)."""
    vectors = vectors.detach().to(torch.float64)
    gram = vectors.T @ vectors if vectors.shape[0] >= vectors.shape[1] else vectors @ vectors.T
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(0)


def effective_rank(vectors: torch.Tensor) -> torch.Tensor:
    """exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σ σⱼ (Roy and Vetterli, "The effective rank: a measure of
    effective dimensionality", EUSIPCO 2007): 1 for a rank-one matrix, d for d orthogonal
    columns of equal norm; 0 for a zero matrix."""
    return _effective_rank(singular_values(vectors))


def information_abundance(vectors: torch.Tensor) -> torch.Tensor:
    """Σ σᵢ / σ₁ (Guo et al., "On the Embedding Collapse When Scaling up Recommendation
    Models", ICML 2024): 1 for a rank-one matrix, d for equal singular values; 0 for a zero
    matrix."""
    return _abundance(singular_values(vectors))


def _effective_rank(sigma: torch.Tensor) -> torch.Tensor:
    total = sigma.sum()
    p = sigma / total.clamp(min=TINY)
    rank = torch.exp(-(p * p.clamp(min=TINY).log()).sum())
    return torch.where(total > 0, rank, 0.0)  # no host sync: logged without waiting


def _abundance(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.sum() / sigma[0].clamp(min=TINY)


def collapse(vectors: dict[tuple[str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``effective_rank/<side>/<task>`` and ``abundance/<side>/<task>`` of each (side, task)'s
    vectors, as float32 scalars on their device."""
    found = {}
    for (side, task), matrix in vectors.items():
        sigma = singular_values(matrix)
        found[f"effective_rank/{side}/{task}"] = _effective_rank(sigma).float()
        found[f"abundance/{side}/{task}"] = _abundance(sigma).float()
    return found
