"""The tasks: each declares its head, the batch fields it reads, its loss, its metrics and
which way they are better, so every other part (the objective, the weighting, metrics,
config validation, the sweep summary, HParams) loops over tasks instead of naming them.

A task is chosen by config (``tasks=[interaction,rating,like]``, one file per task in
``conf/tasks/``); its settings are the fields of its class. :data:`TASKS` holds one of each
with default settings: what reports and validation read (names, metrics, directions).

To add a task: a :class:`Task` subclass here (its loss and metrics), a head of that name in
the nets that serve it, and a ``conf/tasks/<name>.yaml``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mtrec.errors import ConfigError
from mtrec.models.protocol import ID_FIELDS, Ranker, Recommender, Rows
from mtrec.mtl import losses
from mtrec.mtl.metrics import BinaryEvaluator, Evaluator, RankingEvaluator, RatingEvaluator


@dataclass(frozen=True)
class Task(ABC):
    """A task's declaration and behaviour. Subclasses set the class variables and
    :meth:`loss`; their dataclass fields are the task's settings (``tasks.<name>.<field>``)."""

    name: ClassVar[str]  # as logs and docs call it: train/<name>_loss, mtl/.../<name>
    fields: ClassVar[tuple[str, ...]]  # the batch fields its loss reads
    metrics: ClassVar[tuple[str, ...]]  # held-out metrics it reports, the main one first
    lower_is_better: ClassVar[frozenset[str]] = frozenset()  # the metrics that are errors
    regression: ClassVar[bool] = False  # a Gaussian likelihood (uncertainty weighting's ½)

    @property
    def head(self) -> str:
        """The net's head it reads: the task's own name."""
        return self.name

    @property
    def main_metric(self) -> str:
        return self.metric_names()[0]

    @property
    def higher_is_better(self) -> bool:
        """Of the main metric (the one Δm, twins and searches compare)."""
        return self.metrics[0] not in self.lower_is_better

    def metric_names(self, top_k: int = 10) -> tuple[str, ...]:
        return tuple(name.format(k=top_k) for name in self.metrics)

    def is_lower_better(self, metric: str) -> bool:
        return any(_matches(metric, name) for name in self.lower_is_better)

    @abstractmethod
    def evaluator(self, top_k: int, device: torch.device, sync: bool) -> Evaluator:
        """What accumulates the task's held-out metrics (``sync``: add up over DDP ranks)."""

    @property
    def id_fields(self) -> tuple[str, ...] | None:
        """The id fields of :attr:`fields`, which its loss gives its head whole; ``None``
        where it reads ids beyond them or a part of one (every item, a value per item id,
        some of the negatives): a step that sees only the batch's rows cannot serve it."""
        ids = {name for names in ID_FIELDS.values() for name in names}
        return tuple(field for field in self.fields if field in ids)

    def check_net(self, net_class: type[Recommender]) -> None:
        """One clear error, when the run is built, for a net this task's settings cannot use."""
        return None

    @abstractmethod
    def loss(
        self,
        net: Recommender,
        batch: Mapping[str, torch.Tensor],
        rows: Rows | None = None,
        user_rows: Rows | None = None,
    ) -> torch.Tensor:
        """The task's unweighted loss on ``batch``, read through ``net.head(self.head)``.
        ``rows``: the task's copy of the shared rows of the batch's pairs; ``user_rows``: its
        user side, shaped to broadcast over the sampled items (``batch["negatives"]``)."""


def _context(batch: Mapping[str, torch.Tensor], rows: Rows | None) -> dict:
    context = {"history": batch["history"]} if "history" in batch else {}
    return context | ({"rows": rows} if rows else {})


@dataclass(frozen=True)
class Interaction(Task):
    """Implicit feedback: each observed item against the batch's sampled negatives, with
    ``factorization_loss`` (``bounded_bpr`` = mean(1 - sigmoid(p+ - p-)), the reference);
    ``softmax`` scores it against every item instead (nets that rank the catalogue,
    :class:`~mtrec.models.protocol.Ranker`), and ``sampled_softmax`` corrects each logit by
    the log-probability the sampler drew the item with (``batch["log_q"]``, one per item,
    where the negatives are not uniform). Ranked over the whole catalogue: MRR per user
    (reference), per held-out row, HR@k, NDCG@k."""

    name: ClassVar[str] = "interaction"
    fields: ClassVar[tuple[str, ...]] = ("users", "items", "negatives")
    metrics: ClassVar[tuple[str, ...]] = ("mrr", "mrr_interaction", "hr@{k}", "ndcg@{k}")

    factorization_loss: str = "bounded_bpr"

    def __post_init__(self) -> None:
        losses.factorization_loss(self.factorization_loss)  # one clear error for a bad name

    def evaluator(self, top_k, device, sync):
        return RankingEvaluator(top_k, device, sync)

    @property
    def id_fields(self):
        reads_every_item = self.factorization_loss in losses.CATALOGUE | losses.CORRECTED
        return None if reads_every_item else super().id_fields

    def check_net(self, net_class):
        if self.factorization_loss in losses.CATALOGUE and not issubclass(net_class, Ranker):
            raise ConfigError(
                f"model.factorization_loss={self.factorization_loss} scores every item, and "
                f"{net_class.__name__} does not rank the catalogue: use model=multitask, or "
                "model.factorization_loss=sampled_softmax."
            )

    def loss(self, net, batch, rows=None, user_rows=None):
        head, users, items = net.head(self.head), batch["users"], batch["items"]
        positive = head(users, items, **_context(batch, rows))
        negatives = batch["negatives"]
        if self.factorization_loss in losses.CATALOGUE:
            negatives = torch.arange(net.num_items, device=users.device)
        negative = head(users.unsqueeze(-1), negatives, **_context(batch, user_rows))
        if self.factorization_loss in losses.CORRECTED and "log_q" in batch:
            log_q = batch["log_q"]
            positive, negative = positive - log_q[items], negative - log_q[negatives]
        return losses.factorization_loss(self.factorization_loss)(positive, negative)


@dataclass(frozen=True)
class Rating(Task):
    """The observed rating, mean squared error on the rated pairs; ``negative_rating_ratio``
    > 0 adds that many sampled negatives per pair with rating 0 (pointwise training on
    implicit feedback). Scored by MSE and RMSE."""

    name: ClassVar[str] = "rating"
    fields: ClassVar[tuple[str, ...]] = ("users", "items", "ratings")
    metrics: ClassVar[tuple[str, ...]] = ("mse", "rmse")
    lower_is_better: ClassVar[frozenset[str]] = frozenset(metrics)
    regression: ClassVar[bool] = True

    negative_rating_ratio: int = 0

    @property
    def id_fields(self):
        return None if self.negative_rating_ratio else super().id_fields

    def evaluator(self, top_k, device, sync):
        return RatingEvaluator(self.head, device, sync)

    def loss(self, net, batch, rows=None, user_rows=None):
        head, users, observed = net.head(self.head), batch["users"], batch["ratings"]
        predicted = head(users, batch["items"], **_context(batch, rows))
        if self.negative_rating_ratio:
            negatives = batch["negatives"][:, : self.negative_rating_ratio]
            negative = head(users.unsqueeze(-1), negatives, **_context(batch, user_rows))
            predicted = torch.cat([predicted, negative.reshape(-1)])
            observed = torch.cat([observed, observed.new_zeros(negative.numel())])
        return losses.regression_loss(predicted, observed)


@dataclass(frozen=True)
class Like(Task):
    """Whether a rated pair is liked: rating >= ``threshold`` (4 by default: 55.4 % of
    ML-100K's ratings). Binary cross-entropy on the head's logit over the rated pairs; scored
    by AUC (main) and log loss on the held-out rated pairs."""

    name: ClassVar[str] = "like"
    fields: ClassVar[tuple[str, ...]] = ("users", "items", "ratings")
    metrics: ClassVar[tuple[str, ...]] = ("auc", "log_loss")
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"log_loss"})

    threshold: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ConfigError(
                f"tasks.like.threshold={self.threshold} is not valid: use a rating, e.g. 4."
            )

    def labels(self, ratings: torch.Tensor) -> torch.Tensor:
        return (ratings >= self.threshold).to(ratings.dtype)

    def evaluator(self, top_k, device, sync):
        return BinaryEvaluator(self.head, self.labels, self.metric_names(), device, sync)

    def loss(self, net, batch, rows=None, user_rows=None):
        logits = net.head(self.head)(batch["users"], batch["items"], **_context(batch, rows))
        return F.binary_cross_entropy_with_logits(logits, self.labels(batch["ratings"]))


INTERACTION, RATING, LIKE = Interaction(), Rating(), Like()
TASKS: tuple[Task, ...] = (INTERACTION, RATING, LIKE)  # every task, in table order
BY_NAME: dict[str, Task] = {task.name: task for task in TASKS}
DEFAULT = ("interaction", "rating")  # the reference study's two tasks


def task_named(name: str) -> Task:
    """The declaration of task ``name``; one clear error for an unknown one."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(
            f"tasks: {name} is not a task: use some of {', '.join(BY_NAME)}, "
            "e.g. tasks=[interaction,rating,like]."
        ) from None


def tasks_of(heads) -> tuple[Task, ...]:
    """The declared tasks a net with these ``heads`` (names) serves, in :data:`TASKS` order."""
    return tuple(task for task in TASKS if task.head in heads)


def metric_names(heads=DEFAULT, top_k: int = 10) -> tuple[str, ...]:
    """Every held-out metric of these tasks (or heads), in table order."""
    return tuple(name for task in tasks_of(heads) for name in task.metric_names(top_k))


def _matches(bare: str, name: str) -> bool:
    return bare == name or ("{k}" in name and bare.startswith(name.split("{")[0]))


def task_of_metric(metric: str) -> Task | None:
    """The task a metric belongs to, from its name with or without a prefix (``test/mse``)."""
    bare = metric.rsplit("/", 1)[-1]
    for task in TASKS:
        if any(_matches(bare, name) for name in task.metrics):
            return task
    return None


def lower_is_better(metric: str) -> bool:
    """True for errors (MSE, RMSE, log loss); every other metric is better when higher."""
    task = task_of_metric(metric)
    return task is not None and task.is_lower_better(metric.rsplit("/", 1)[-1])
