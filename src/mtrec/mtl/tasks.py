"""The tasks: each declares its head's kind, the batch fields it reads, its loss, its metrics
and which way they are better, and its default loss weight, so every other part (the
objective, the weighting, metrics, config validation, the sweep summary, HParams, figures)
loops over the chosen tasks instead of naming them.

A task is chosen by config (``tasks=[interaction,rating,like]``): ``conf/tasks/<name>.yaml``
instantiates it (``_target_``: a :class:`Task` subclass, here or in a researcher's own
package, found through ``hydra.searchpath``); its settings are the fields of its class.
Nothing keeps a list of the tasks there are: a new task is one class and one config file
(README, "A new task").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import MeanSquaredError

from mtrec.errors import ConfigError
from mtrec.models.protocol import ID_FIELDS, HeadKind, Ranker, Recommender, Rows
from mtrec.mtl import losses
from mtrec.mtl.metrics import BinaryEvaluator, Evaluator, PairMetrics, RankingEvaluator


class Scored:
    """What reports read of a task: its name and metrics, and which way they are better."""

    name: str
    metrics: tuple[str, ...]  # held-out metrics it reports, the main one first
    lower_is_better: frozenset[str]  # the metrics that are errors

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

    def declared(self) -> dict:
        """The declaration a run folder keeps (reports read it without importing the task)."""
        return {"metrics": list(self.metrics), "lower_is_better": sorted(self.lower_is_better)}


@dataclass(frozen=True)
class Declared(Scored):
    """A task as a run folder recorded it (:meth:`Scored.declared`)."""

    name: str
    metrics: tuple[str, ...]
    lower_is_better: frozenset[str] = frozenset()

    @classmethod
    def read(cls, name: str, record: Mapping) -> Declared:
        return cls(name, tuple(record["metrics"]), frozenset(record.get("lower_is_better", ())))


@dataclass(frozen=True)
class Task(Scored, ABC):
    """A task's declaration and behaviour. Subclasses set the class variables and
    :meth:`loss` and :meth:`evaluator`; their dataclass fields are the task's settings
    (``tasks.<name>.<field>``)."""

    name: ClassVar[str]  # as logs and docs call it: train/<name>_loss, mtl/.../<name>
    head_kind: ClassVar[HeadKind]  # what the net's head for it gives per (user, item) pair
    fields: ClassVar[tuple[str, ...]]  # the batch fields its loss reads
    metrics: ClassVar[tuple[str, ...]]  # held-out metrics it reports, the main one first
    lower_is_better: ClassVar[frozenset[str]] = frozenset()  # the metrics that are errors
    regression: ClassVar[bool] = False  # a Gaussian likelihood (uncertainty weighting's ½)
    default_weight: ClassVar[float | None] = None  # under fixed weights, unless one is given

    @abstractmethod
    def evaluator(self, top_k: int, device: torch.device, sync: bool) -> Evaluator:
        """What accumulates the task's held-out metrics (``sync``: add up over DDP ranks)."""

    @property
    def id_fields(self) -> tuple[str, ...] | None:
        """The id fields of :attr:`fields`, which its loss gives its head whole; ``None``
        where it reads other ids or a part of one (some of the negatives): a step that sees
        only the batch's rows cannot serve it."""
        ids = {name for names in ID_FIELDS.values() for name in names}
        return tuple(field for field in self.fields if field in ids)

    @property
    def reads_every(self) -> frozenset[str]:
        """The kinds of id (:data:`~mtrec.models.protocol.ID_FIELDS`) at every one of which
        its loss reads its head (a loss over the whole catalogue, ids ``0 .. n - 1``): a step
        over the batch's rows then reads those tables whole, each id its own position."""
        return frozenset()

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
        """The task's unweighted loss on ``batch``, read through ``net.head(self.name)``.
        ``rows``: the task's copy of the shared rows of the batch's pairs; ``user_rows``: its
        user side, shaped to broadcast over the sampled items (``batch["negatives"]``)."""

    def pairs(self, net: Recommender, batch: Mapping[str, torch.Tensor], rows: Rows | None):
        """The task's head on the batch's (user, item) pairs, reading its copy ``rows``."""
        return net.head(self.name)(batch["users"], batch["items"], **head_inputs(batch, rows))


def head_inputs(batch: Mapping[str, torch.Tensor], rows: Rows | None) -> dict:
    """What a head reads beside the ids: the users' histories, the task's shared rows."""
    context = {"history": batch["history"]} if "history" in batch else {}
    return context | ({"rows": rows} if rows else {})


@dataclass(frozen=True)
class Interaction(Task):
    """Implicit feedback: each observed item against the batch's sampled negatives, with
    ``factorization_loss`` (``bounded_bpr`` = mean(1 - sigmoid(p+ - p-)), the reference);
    ``softmax`` scores it against every item instead (nets that rank the catalogue,
    :class:`~mtrec.models.protocol.Ranker`), and ``sampled_softmax`` corrects each logit by
    the log-probability the sampler drew the item with (``batch["log_q_items"]`` and
    ``batch["log_q_negatives"]``, gathered per row, where the negatives are not uniform).
    Ranked over the whole catalogue: MRR per user (reference), per held-out row, HR@k,
    NDCG@k."""

    name: ClassVar[str] = "interaction"
    head_kind: ClassVar[HeadKind] = HeadKind.RANKING
    default_weight: ClassVar[float] = 0.99  # λF, the reference's
    fields: ClassVar[tuple[str, ...]] = ("users", "items", "negatives")
    metrics: ClassVar[tuple[str, ...]] = ("mrr", "mrr_interaction", "hr@{k}", "ndcg@{k}")

    factorization_loss: str = "bounded_bpr"

    def __post_init__(self) -> None:
        losses.factorization_loss(self.factorization_loss)  # one clear error for a bad name

    def evaluator(self, top_k, device, sync):
        return RankingEvaluator(top_k, device, sync)

    @property
    def id_fields(self):
        if self.factorization_loss in losses.CATALOGUE:  # every item instead of the negatives
            return tuple(field for field in super().id_fields if field != "negatives")
        return super().id_fields

    @property
    def reads_every(self):
        return frozenset({"item"} if self.factorization_loss in losses.CATALOGUE else ())

    def check_net(self, net_class):
        if self.factorization_loss in losses.CATALOGUE and not issubclass(net_class, Ranker):
            raise ConfigError(
                f"model.factorization_loss={self.factorization_loss} scores every item, and "
                f"{net_class.__name__} does not rank the catalogue: use model=multitask, or "
                "model.factorization_loss=sampled_softmax."
            )

    def loss(self, net, batch, rows=None, user_rows=None):
        head, users = net.head(self.name), batch["users"]
        positive = head(users, batch["items"], **head_inputs(batch, rows))
        negatives = batch["negatives"]
        if self.factorization_loss in losses.CATALOGUE:  # every item: see reads_every
            negatives = torch.arange(net.num_items, device=users.device)
        negative = head(users.unsqueeze(-1), negatives, **head_inputs(batch, user_rows))
        if self.factorization_loss in losses.CORRECTED and "log_q_items" in batch:
            positive = positive - batch["log_q_items"]
            negative = negative - batch["log_q_negatives"]
        return losses.factorization_loss(self.factorization_loss)(positive, negative)


@dataclass(frozen=True)
class Rating(Task):
    """The observed rating, mean squared error on the rated pairs; ``negative_rating_ratio``
    > 0 adds that many sampled negatives per pair with rating 0 (pointwise training on
    implicit feedback). Scored by MSE and RMSE."""

    name: ClassVar[str] = "rating"
    head_kind: ClassVar[HeadKind] = HeadKind.SCORE
    default_weight: ClassVar[float] = 0.01  # λR, the reference's
    fields: ClassVar[tuple[str, ...]] = ("users", "items", "ratings")
    metrics: ClassVar[tuple[str, ...]] = ("mse", "rmse")
    lower_is_better: ClassVar[frozenset[str]] = frozenset(metrics)
    regression: ClassVar[bool] = True

    negative_rating_ratio: int = 0

    @property
    def id_fields(self):
        return None if self.negative_rating_ratio else super().id_fields

    def evaluator(self, top_k, device, sync):
        squared = {"mse": MeanSquaredError(), "rmse": MeanSquaredError(squared=False)}
        return PairMetrics(self.name, squared, lambda ratings: ratings, device, sync)

    def loss(self, net, batch, rows=None, user_rows=None):
        head, users, observed = net.head(self.name), batch["users"], batch["ratings"]
        predicted = head(users, batch["items"], **head_inputs(batch, rows))
        if self.negative_rating_ratio:
            negatives = batch["negatives"][:, : self.negative_rating_ratio]
            negative = head(users.unsqueeze(-1), negatives, **head_inputs(batch, user_rows))
            predicted = torch.cat([predicted, negative.reshape(-1)])
            observed = torch.cat([observed, observed.new_zeros(negative.numel())])
        return losses.regression_loss(predicted, observed)


@dataclass(frozen=True)
class Like(Task):
    """Whether a rated pair is liked: rating >= ``threshold`` (4 by default: 55.4 % of
    ML-100K's ratings). Binary cross-entropy on the head's logit over the rated pairs; scored
    by AUC (main) and log loss on the held-out rated pairs."""

    name: ClassVar[str] = "like"
    head_kind: ClassVar[HeadKind] = HeadKind.LOGIT
    default_weight: ClassVar[float] = 0.01
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
        return BinaryEvaluator(self.name, self.labels, self.metric_names(), device, sync)

    def loss(self, net, batch, rows=None, user_rows=None):
        logits = self.pairs(net, batch, rows)
        return F.binary_cross_entropy_with_logits(logits, self.labels(batch["ratings"]))


REFERENCE: tuple[type[Task], ...] = (Interaction, Rating)  # the reference study's two tasks


def reference_tasks() -> tuple[Task, ...]:
    """The reference study's tasks with default settings (a module or objective given none)."""
    return tuple(task() for task in REFERENCE)


def metric_names(tasks: Sequence[Task | Declared], top_k: int = 10) -> tuple[str, ...]:
    """Every held-out metric of these tasks, task by task, each task's main metric first."""
    return tuple(name for task in tasks for name in task.metric_names(top_k))


def _matches(bare: str, name: str) -> bool:
    return bare == name or ("{k}" in name and bare.startswith(name.split("{")[0]))


def task_of_metric(tasks: Sequence[Task | Declared], metric: str) -> Task | Declared | None:
    """Which of ``tasks`` reports ``metric`` (named with or without a prefix, ``test/mse``)."""
    bare = metric.rsplit("/", 1)[-1]
    for task in tasks:
        if any(_matches(bare, name) for name in task.metrics):
            return task
    return None


def lower_is_better(tasks: Sequence[Task | Declared], metric: str) -> bool:
    """True for the errors of these tasks (MSE, RMSE, log loss); every other metric, and a
    metric of none of them, is better when higher."""
    task = task_of_metric(tasks, metric)
    return task is not None and task.is_lower_better(metric.rsplit("/", 1)[-1])


def check_names(tasks: Mapping[str, Task]) -> None:
    """Each task of the ``tasks`` group under its own name (``tasks.<name>`` builds a task
    whose ``name`` is ``<name>``): logs, weights and heads are keyed by that name."""
    for key, task in tasks.items():
        if not isinstance(task, Task):
            raise ConfigError(
                f"tasks.{key} builds a {type(task).__name__}, not a task: its _target_ must be "
                "a subclass of mtrec.mtl.tasks.Task."
            )
        if task.name != key:
            raise ConfigError(
                f"tasks.{key} builds {type(task).__name__}, whose name is {task.name}: name "
                f"its config file conf/tasks/{task.name}.yaml and its key {task.name}."
            )
