"""Ranking and rating metrics over a whole held-out set, vectorised (no loop over users).

Ranking conventions (all filter the user's known interactions to the bottom of the ranking,
and leave the user's other held-out items among the candidates; ties take their average rank):

- ``mrr``: reference convention, per user. Mean of 1/rank over the user's held-out items,
  then mean over users.
- ``mrr_interaction``: mean of 1/rank over all held-out rows.
- ``hr@k``: share of held-out rows ranked within the top k.
- ``ndcg@k``: mean over held-out rows of 1/log2(rank + 1) inside the top k, 0 outside
  (one relevant item per row, so the ideal DCG is 1).

Rating metrics: ``mse``, the mean over held-out rows of (r - r̂)², and ``rmse``, its root.

Like metrics (rating >= the like task's threshold, on the held-out rated pairs): ``auc``, the
area under the ROC curve of the like head's logits, and ``log_loss``, the mean binary
cross-entropy of its probabilities.

The held-out users are scored in chunks (:func:`user_chunks`); each chunk's ranks and ratings
go into torchmetrics metrics that keep running sums, so no users × items table outlives its
chunk, and the sums of several DDP ranks can be added up (``evaluate(..., rank, world_size)``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAUROC

from mtrec.compile import compile_or_eager
from mtrec.data.interactions import HeldOut

# Scores per chunk of users: 128 MB of float32. ML-100K (943 × 1,682) fits in one chunk.
MAX_SCORES = 1 << 25
# Held-out rows × items of a chunk from which ranks take the compiled pass (ML-100K's 8.4 M
# stay eager: compiling would cost more than all its evaluations).
FUSED_ABOVE = 1 << 26


def average_ranks(
    scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """1-based rank of ``scores[rows, items]`` within its row, ties at their average rank.

    With ``higher``, ``lower`` and ``tied`` (the target included) items in a row of ``n``,
    the average rank ``higher + (tied + 1) / 2`` equals ``(higher - lower + n + 1) / 2``:
    one pass of ``sign(score - target)`` per row gives it. Rows go in chunks small enough to
    stay in the CPU cache (256 rows were fastest on ML-100K) and to bound memory.

    Written by hand rather than with torchmetrics' retrieval metrics (``RetrievalMRR``,
    ``RetrievalHitRate``, ``RetrievalNormalizedDCG`` in torchmetrics 1.9): those take flat
    ``(preds, target, indexes)`` triples, one per candidate item, keep every update in list
    states and group them by query only in ``compute``, so a full-catalogue ranking would
    materialise the whole users × items score matrix with index and target tensors of the
    same size. They also break ties in ``topk``/``argsort`` order (only the nDCG averages
    ties) and score a query by its first relevant item (MRR, which also drops targets scored
    at or below 0) or by any of them (hit rate), where the reference scores every held-out row,
    the user's other held-out items staying among the candidates. Here one reused buffer of
    ``chunk_size`` rows, sized for the cache, is ranked at a time.
    """
    num_items = scores.shape[1]
    if len(rows) * num_items >= FUSED_ABOVE:
        targets = scores[rows, items]
        return (_fused_higher_minus_lower(scores, rows, targets) + num_items + 1) / 2
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


def _higher_minus_lower(
    scores: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per row, the items scored above its target minus those below."""
    return torch.sign(scores[rows] - targets.unsqueeze(1)).sum(1)


_fused_higher_minus_lower = compile_or_eager(_higher_minus_lower, dynamic=True)


def _on(metric: Metric, device: torch.device) -> Metric:
    """``metric`` with its states on ``device`` (they start on the CPU; moving costs time)."""
    return metric if device == metric.device else metric.to(device)


class RankingMetrics(Metric):
    """The ranking metrics of the module docstring, from the ranks of held-out rows.

    Updated once per chunk of users (every user's rows in the same update); the states are
    sums, so chunks, and DDP ranks when ``sync_on_compute`` is on, add up to the whole set.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.add_state("users", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("user_reciprocal", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("rows", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("reciprocal", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("gain", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, ranks: torch.Tensor, row_of: torch.Tensor, num_users: int) -> None:
        """``row_of`` gives each rank's user, ``0..num_users-1``, each with at least one row."""
        reciprocal = 1.0 / ranks
        per_user = torch.zeros(num_users, dtype=ranks.dtype, device=ranks.device)
        per_user.index_add_(0, row_of, reciprocal)
        counts = torch.bincount(row_of, minlength=num_users)
        in_top_k = ranks <= self.k
        # in place: ``+=`` would also go through nn.Module's __setattr__, six times per chunk
        self.users.add_(num_users)
        self.user_reciprocal.add_((per_user / counts).sum())
        self.rows.add_(len(ranks))
        self.reciprocal.add_(reciprocal.sum())
        self.hits.add_(in_top_k.sum())
        self.gain.add_(torch.where(in_top_k, 1.0 / torch.log2(ranks + 1.0), 0.0).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "mrr": self.user_reciprocal / self.users,
            "mrr_interaction": self.reciprocal / self.rows,
            f"hr@{self.k}": self.hits / self.rows,
            f"ndcg@{self.k}": self.gain / self.rows,
        }


def ranking_metrics(
    ranks: torch.Tensor, row_of: torch.Tensor, num_users: int, k: int = 10
) -> dict[str, torch.Tensor]:
    """Metrics from the rank of every held-out row; ``row_of`` gives each row's user (0..n-1)."""
    metric = _on(RankingMetrics(k), ranks.device)
    metric.update(ranks, row_of, num_users)
    return metric.compute()


@dataclass(frozen=True)
class UserChunk:
    """A run of held-out users and the rows that belong to them (all slices)."""

    users: slice  # positions in ``eval_users``
    rows: slice  # held-out rows: ``users``/``items``/``ratings``/``row_of``/``history``
    seen: slice  # known interactions: ``seen_rows``/``seen_items``


def user_chunks(
    held: HeldOut, max_scores: int = MAX_SCORES, rank: int = 0, world_size: int = 1
) -> Iterator[UserChunk]:
    """The held-out users in chunks of at most ``max_scores`` scores; ``rank``'s share of them.

    Chunks are dealt to ranks in turn, and are small enough that every rank gets one when
    there are at least ``world_size`` users. ``row_of`` and ``seen_rows`` are sorted, so the
    bounds of all chunks come from two binary searches.
    """
    num_users = len(held.eval_users)
    per_chunk = max(1, min(max_scores // held.num_items, math.ceil(num_users / world_size)))
    starts = list(range(0, num_users, per_chunk))
    bounds = torch.tensor([*starts, num_users], device=held.row_of.device)
    rows = torch.searchsorted(held.row_of, bounds).tolist()
    seen = torch.searchsorted(held.seen_rows, bounds).tolist()
    for c in range(rank, len(starts), world_size):
        yield UserChunk(
            users=slice(starts[c], min(starts[c] + per_chunk, num_users)),
            rows=slice(rows[c], rows[c + 1]),
            seen=slice(seen[c], seen[c + 1]),
        )


def all_items_scorer(net: torch.nn.Module):
    """The net's ``scorer()`` (:class:`~mtrec.models.protocol.Ranker`): ``score_all_items``
    for many calls in a row, with the item side computed once where the net can."""
    return net.scorer()


class Evaluator(ABC):
    """One task's held-out metrics, accumulated chunk by chunk of users (torchmetrics states:
    DDP ranks add up). A task makes its own (:meth:`mtrec.mtl.tasks.Task.evaluator`)."""

    @abstractmethod
    def update(self, net: torch.nn.Module, held: HeldOut, chunk: UserChunk) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, torch.Tensor]: ...


def _pairs(net: torch.nn.Module, task: str, held: HeldOut, chunk: UserChunk) -> torch.Tensor:
    """The task's head on the chunk's held-out pairs (with their histories, if any)."""
    history = held.history[chunk.rows] if held.history is not None else None
    return net.head(task)(held.users[chunk.rows], held.items[chunk.rows], history=history)


class RankingEvaluator(Evaluator):
    """Every held-out row ranked against the whole catalogue (the interaction head's scores,
    known items pushed to the bottom): MRR per user and per row, HR@k, NDCG@k."""

    def __init__(self, k: int, device: torch.device, sync: bool):
        self.metric = _on(RankingMetrics(k, sync_on_compute=sync), device)
        self.score = None

    def update(self, net, held, chunk):
        self.score = self.score or all_items_scorer(net)  # the item side once per evaluation
        users = chunk.users.stop - chunk.users.start
        row_of = held.row_of[chunk.rows] - chunk.users.start
        self.metric.update(chunk_ranks(self.score, held, chunk), row_of, users)

    def compute(self):
        return dict(self.metric.compute())


class PairMetrics(Evaluator):
    """A head's output on the held-out rated pairs against a target made from their ratings,
    scored by torchmetrics ``metrics`` (name -> metric, each updated with ``(output,
    target)``): the rating task's MSE and RMSE, or a new task's own (accuracy, F1, ...)."""

    def __init__(
        self,
        task: str,
        metrics: Mapping[str, Metric],
        target: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        sync: bool,
    ):
        self.task, self.target = task, target
        self.metrics = {name: _on(metric, device) for name, metric in metrics.items()}
        for metric in self.metrics.values():
            metric.sync_on_compute = sync

    def update(self, net, held, chunk):
        output = _pairs(net, self.task, held, chunk)
        target = self.target(held.ratings[chunk.rows])
        for metric in self.metrics.values():
            metric.update(output, target)

    def compute(self):
        return {name: metric.compute() for name, metric in self.metrics.items()}


class BinaryEvaluator(Evaluator):
    """A binary head's logits against labels made from the held-out ratings: AUC and log
    loss (mean binary cross-entropy), under ``names``."""

    def __init__(
        self,
        task: str,
        labels: Callable[[torch.Tensor], torch.Tensor],
        names: tuple[str, str],
        device: torch.device,
        sync: bool,
    ):
        self.task, self.labels, self.names = task, labels, names
        self.auc = _on(BinaryAUROC(sync_on_compute=sync), device)
        self.log_loss = _on(MeanMetric(sync_on_compute=sync), device)

    def update(self, net, held, chunk):
        logits = _pairs(net, self.task, held, chunk)
        labels = self.labels(held.ratings[chunk.rows])
        self.auc.update(logits, labels.long())
        self.log_loss.update(F.binary_cross_entropy_with_logits(logits, labels, reduction="none"))

    def compute(self):
        auc, log_loss = self.names
        return {auc: self.auc.compute(), log_loss: self.log_loss.compute()}


def chunk_ranks(score, held: HeldOut, chunk: UserChunk) -> torch.Tensor:
    """The rank of the chunk's held-out rows among all items, known items pushed to the bottom;
    ``score``: the net's :func:`all_items_scorer`."""
    start = chunk.users.start
    scores = score(held.eval_users[chunk.users])
    scores[held.seen_rows[chunk.seen] - start, held.seen_items[chunk.seen]] = float("-inf")
    return average_ranks(scores, held.row_of[chunk.rows] - start, held.items[chunk.rows])


def held_out_ranks(
    net: torch.nn.Module, held: HeldOut, max_scores: int = MAX_SCORES
) -> torch.Tensor:
    """The rank of every held-out row among all items, known items pushed to the bottom.

    Users are scored in chunks of at most ``max_scores`` scores, so memory stays bounded for
    any catalogue.
    """
    ranks = torch.empty(len(held.items), device=held.items.device)
    score = all_items_scorer(net)
    for chunk in user_chunks(held, max_scores):
        ranks[chunk.rows] = chunk_ranks(score, held, chunk)
    return ranks
