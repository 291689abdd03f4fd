"""What a net offers, declared: every net is a :class:`Recommender`; the other abstract bases
are capabilities a net takes on by inheriting them, checked once when a run is built
(``isinstance``), never probed attribute by attribute.

- :class:`Recommender`: ``head_kinds`` (the kinds of head it can build, :class:`HeadKind`),
  ``head(task)`` (one call signature for every head, :class:`Head`), ``item_vectors()``.
- :class:`Ranker`: ``score_all_items(users)``, for nets with a ranking head.
- :class:`SharesRows`: ``shared(users, items)``, what its tasks share for a batch (embedding
  rows, :class:`TableRows`, or a shared layer's output): where per-task gradients are taken
  (:class:`mtrec.mtl.shared.TaskCopies`).
- :class:`EmbeddingNorms`: ``embedding_norms(users, items)``, for the SVD-style penalty.
- :class:`Penalised`: ``penalty()``, a penalty of its own parameters added to the loss.
- :class:`Gated`: ``gate_use()``, mixture-of-experts gate shares to log.
- :class:`Represents`: ``vectors()``, every id's vector as each task reads it, whose
  collapse (effective rank, information abundance) is logged every epoch.
- :class:`IndexedTables`: ``tables_read()``, the embedding tables each head reads in
  training and the kind of id that indexes them, so a step can read and update only the
  rows of its batch (under sparse rows).
- :class:`ChecksSettings`: ``check_settings(settings)``, the rules of its settings, which
  config validation runs before any work.
- :class:`Parts`: ``parts()``, its parameters by named part, each of which may get its own
  optimizer settings (``model.parts``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from mtrec.errors import ConfigError

Rows = Mapping[str, torch.Tensor]
# the batch fields that hold each kind of id (:class:`IndexedTables`)
ID_FIELDS: dict[str, tuple[str, ...]] = {"user": ("users",), "item": ("items", "negatives")}


@dataclass(frozen=True)
class HeadKind:
    """What a task asks of the net: the kind of head, by what it gives per (user, item) pair.

    - ``ranking``: a score that is a dot product of a user-side and an item-side vector (plus
      an item bias), so one matrix product ranks the whole catalogue;
    - ``score``: a real number (a rating);
    - ``logit``: the logit of a binary label;
    - ``classes``: ``outputs`` logits, one per class (shape ``(..., outputs)``).
    """

    name: str
    outputs: int = 1

    RANKING: ClassVar[HeadKind]
    SCORE: ClassVar[HeadKind]
    LOGIT: ClassVar[HeadKind]

    @classmethod
    def classes(cls, count: int) -> HeadKind:
        return cls("classes", count)

    def __str__(self) -> str:
        return self.name if self.name != "classes" else f"classes({self.outputs})"


HeadKind.RANKING, HeadKind.SCORE, HeadKind.LOGIT = (
    HeadKind("ranking"),
    HeadKind("score"),
    HeadKind("logit"),
)


class NamedHead(Protocol):
    """What a net reads of a task: its name (the head's key) and the kind of head it asks
    for (:class:`mtrec.mtl.tasks.Task` is one)."""

    name: str
    head_kind: HeadKind


class Head(Protocol):
    """What a net's head is called with: ``head(users, items, rows=None, history=None)``.

    ``users`` and ``items`` broadcast (e.g. (B, 1) users against (B, K) sampled items);
    ``rows``: the task's own copy of what the tasks share (read instead of the tables, see
    :class:`mtrec.mtl.shared.TaskCopies`); ``history``: the users' last rated items, for
    nets that read them. Returns one score per pair, of the broadcast shape."""

    @abstractmethod
    def __call__(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        rows: Rows | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class Recommender(nn.Module, ABC):
    """A plain ``nn.Module`` with a head per task, keyed by task name.

    ``head_kinds`` names the kinds of head (:class:`HeadKind`) the class can build; a net
    serves any task that asks for one of them. ``needs_history``: its heads read the users'
    last rated items (``history=``), which the data module then puts in every batch.
    """

    head_kinds: ClassVar[tuple[str, ...]]
    needs_history: ClassVar[bool] = False

    @abstractmethod
    def head(self, task: str) -> Head:
        """The head serving ``task``: ``head(users, items, rows=None, history=None)``."""

    @abstractmethod
    def item_vectors(self) -> torch.Tensor:
        """One vector per item (for the projector and item-item similarity)."""

    @classmethod
    def check_tasks(cls, tasks: Sequence[NamedHead]) -> None:
        """One clear error for a task asking for a kind of head this class cannot build
        (config validation calls it before any work)."""
        for task in tasks:
            if task.head_kind.name not in cls.head_kinds:
                raise ConfigError(
                    f"tasks: {task.name} asks for a {task.head_kind} head, and {cls.__name__} "
                    f"builds {' and '.join(cls.head_kinds)} heads only. Fix: leave {task.name} "
                    "out of tasks=[...], or a model with that kind of head (model=multitask "
                    "builds every kind)."
                )


class Ranker(ABC):
    num_items: int  # the catalogue's size: ids 0 .. num_items - 1

    @abstractmethod
    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Ranking scores of every item for each user: (len(user_ids), num_items)."""

    def scorer(self):
        """``score_all_items`` for many calls in a row; nets may precompute item vectors."""
        return self.score_all_items


@dataclass(frozen=True)
class TableRows:
    """The rows ``ids`` of embedding ``table`` a batch reads.

    Gathered without autograd; the gradient sent back is added to the table's gradient by
    index (a sparse gradient for a sparse table), which is what the embedding's backward
    would do, without a pass of the autograd engine (about a tenth of a step on ML-100K).
    """

    table: nn.Embedding
    ids: torch.Tensor

    def gather(self) -> torch.Tensor:
        with torch.no_grad():
            return self.table(self.ids)

    def rows(self, gradient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids and the table rows' gradient that ``gradient`` (on the gathered rows)
        gives, the padding row's masked: what the embedding's backward adds by index."""
        rows = gradient.reshape(-1, self.table.weight.shape[1])
        ids = self.ids.reshape(-1)
        if self.table.padding_idx is not None:  # the padding row never learns
            rows = rows * (ids != self.table.padding_idx).unsqueeze(1).to(rows)
        return ids, rows

    def send(self, gradient: torch.Tensor) -> None:
        weight = self.table.weight
        ids, rows = self.rows(gradient)
        if self.table.sparse:  # as a sparse table's own backward: one row per id, unsummed
            gradient = torch.sparse_coo_tensor(
                ids.long().unsqueeze(0), rows, weight.shape, check_invariants=False
            )
            weight.grad = gradient if weight.grad is None else weight.grad + gradient
            return
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, ids, rows)


class SharesRows(ABC):
    @abstractmethod
    def shared(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> dict:
        """What the tasks share for a batch: :class:`TableRows` or tensors,
        keyed as the heads' ``rows=`` reads them; empty when the heads share nothing."""


class EmbeddingNorms(ABC):
    @abstractmethod
    def embedding_norms(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, task: str | None = None
    ) -> torch.Tensor:
        """Squared norms of the embedding and bias rows each (user, item) pair uses (those
        ``task``'s head reads, if given; else every head's)."""


class Penalised(ABC):
    @abstractmethod
    def penalty(self) -> torch.Tensor | float:
        """A penalty on its own parameters that the loss adds (0: none set)."""


class Gated(ABC):
    @abstractmethod
    def gate_use(self) -> dict[str, torch.Tensor]:
        """Each gate's mean share per expert (``gate/<side>/<gate>/<expert>``)."""


class Represents(ABC):
    @abstractmethod
    def vectors(self) -> dict[tuple[str, str], torch.Tensor]:
        """Every id's vector (n × d) as each task reads it, keyed ``(side, task)``, side
        ``user`` or ``item``; computed without gradients."""


class IndexedTables(ABC):
    @abstractmethod
    def tables_read(self) -> dict[str, dict[str, tuple[nn.Embedding, ...]]]:
        """For each head, the embedding tables it reads in training, by the kind of id that
        indexes them (:data:`ID_FIELDS`): ``"user"`` tables at the user ids the head is given,
        ``"item"`` tables at its item ids. Empty when a head reads more of a table than the
        rows of those ids (an encoder over whole tables)."""


class ChecksSettings(ABC):
    @classmethod
    @abstractmethod
    def check_settings(cls, settings: Mapping) -> None:
        """One clear error for a bad value among ``settings`` (the net's constructor
        arguments by name, ``model.net.<name>``): called when the net is built, and by
        config validation on the config's values before any work."""


class Parts(ABC):
    @classmethod
    @abstractmethod
    def part_names(cls, tasks: Sequence[str]) -> tuple[str, ...]:
        """The names of :meth:`parts` for a net of these tasks (config validation checks
        ``model.parts`` against them before any work)."""

    @abstractmethod
    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Its parameters by named part (each parameter in one part at most)."""

    @abstractmethod
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only ``task``'s loss trains (its head's, tables no other task
        reads): what stopping that task freezes."""
