"""Ranking and rating metrics over a whole held-out set, vectorised (no loop over users).

Ranking conventions (all filter the user's known interactions to the bottom of the ranking,
and leave the user's other held-out items among the candidates; ties take their average rank):

- ``mrr``: reference convention, per user. Mean of 1/rank over the user's held-out items,
  then mean over users.
- ``mrr_interaction``: mean of 1/rank over all held-out rows.
- ``hr@k``: share of held-out rows ranked within the top k.
- ``ndcg@k``: mean over held-out rows of 1/log2(rank + 1) inside the top k, 0 outside
  (one relevant item per row, so the ideal DCG is 1).
"""

from __future__ import annotations

import torch

from mtrec.data.interactions import HeldOut


def average_ranks(
    scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """1-based rank of ``scores[rows, items]`` within its row, ties at their average rank.

    With ``higher``, ``lower`` and ``tied`` (the target included) items in a row of ``n``,
    the average rank ``higher + (tied + 1) / 2`` equals ``(higher - lower + n + 1) / 2``:
    one pass of ``sign(score - target)`` per row gives it. Rows go in chunks small enough to
    stay in the CPU cache (256 rows were fastest on ML-100K) and to bound memory.
    """
    num_items = scores.shape[1]
    targets = scores[rows, items].unsqueeze(1)
    higher_minus_lower = torch.empty(len(rows), dtype=scores.dtype, device=scores.device)
    # one reused buffer: fresh pages for every chunk would cost more than the arithmetic
    buffer = scores.new_empty(min(chunk_size, len(rows)), num_items)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        row_scores = torch.index_select(scores, 0, chunk, out=buffer[: len(chunk)])
        row_scores.sub_(targets[start : start + chunk_size]).sign_()
        torch.sum(row_scores, 1, out=higher_minus_lower[start : start + chunk_size])
    return (higher_minus_lower + num_items + 1) / 2


def ranking_metrics(
    ranks: torch.Tensor, row_of: torch.Tensor, num_users: int, k: int = 10
) -> dict[str, torch.Tensor]:
    """Metrics from the rank of every held-out row; ``row_of`` gives each row's user (0..n-1)."""
    reciprocal = 1.0 / ranks
    per_user = torch.zeros(num_users, dtype=ranks.dtype, device=ranks.device)
    per_user.index_add_(0, row_of, reciprocal)
    counts = torch.bincount(row_of, minlength=num_users).to(ranks.dtype)
    in_top_k = ranks <= k
    return {
        "mrr": (per_user / counts).mean(),
        "mrr_interaction": reciprocal.mean(),
        f"hr@{k}": in_top_k.to(ranks.dtype).mean(),
        f"ndcg@{k}": torch.where(in_top_k, 1.0 / torch.log2(ranks + 1.0), 0.0).mean(),
    }


def rating_metrics(predicted: torch.Tensor, observed: torch.Tensor) -> dict[str, torch.Tensor]:
    mse = torch.mean((predicted - observed) ** 2)
    return {"mse": mse, "rmse": mse.sqrt()}


def held_out_ranks(net: torch.nn.Module, held: HeldOut, max_scores: int = 1 << 25) -> torch.Tensor:
    """The rank of every held-out row among all items, known items pushed to the bottom.

    Users are scored in chunks of at most ``max_scores`` scores (128 MB of float32), so memory
    stays bounded for any catalogue; ML-100K fits in one chunk.
    """
    num_users, num_items = len(held.eval_users), held.num_items
    users_per_chunk = max(1, max_scores // num_items)
    ranks = torch.empty(len(held.items), device=held.items.device)
    for start in range(0, num_users, users_per_chunk):
        bounds = torch.tensor([start, start + users_per_chunk], device=held.items.device)
        seen = slice(*torch.searchsorted(held.seen_rows, bounds).tolist())
        rows = slice(*torch.searchsorted(held.row_of, bounds).tolist())
        scores = net.score_all_items(held.eval_users[start : start + users_per_chunk])
        scores[held.seen_rows[seen] - start, held.seen_items[seen]] = float("-inf")
        ranks[rows] = average_ranks(scores, held.row_of[rows] - start, held.items[rows])
    return ranks


# The targets of the selection criterion: the per-interaction MRR and the RMSE that one
# checkpoint of a multi-task model should reach together (README, "Beyond the reference").
SELECTION_TARGETS = {"mrr_interaction": 0.130, "rmse": 0.880}


def combined_score(metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """``min(mrr_interaction / 0.130, 0.880 / rmse)``: the head furthest from its target
    decides, so one checkpoint is chosen for both heads; above 1 both targets are met."""
    mrr, rmse = SELECTION_TARGETS["mrr_interaction"], SELECTION_TARGETS["rmse"]
    return torch.minimum(metrics["mrr_interaction"] / mrr, rmse / metrics["rmse"])


@torch.no_grad()
def evaluate(net: torch.nn.Module, held: HeldOut, k: int = 10) -> dict[str, torch.Tensor]:
    """The metrics of the heads ``net`` has: ranking from interactions, MSE from ratings."""
    metrics = {}
    if "interaction" in net.heads:
        ranks = held_out_ranks(net, held)
        metrics.update(ranking_metrics(ranks, held.row_of, len(held.eval_users), k))
    if "rating" in net.heads:
        context = {"history": held.history} if held.history is not None else {}
        predicted = net.ratings(held.users, held.items, **context)
        metrics.update(rating_metrics(predicted, held.ratings))
    if "mrr_interaction" in metrics and "rmse" in metrics:
        metrics["combined"] = combined_score(metrics)
    return metrics
