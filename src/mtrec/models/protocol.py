"""What a net offers, declared: every net is a :class:`Recommender`; the other abstract bases
are capabilities a net takes on by inheriting them, checked once when a run is built
(``isinstance``), never probed attribute by attribute.

- :class:`Recommender`: ``heads`` (the tasks it can serve), ``head(task)`` (one call
  signature for every head, :class:`mtrec.mtl.tasks.Head`), ``item_vectors()``.
- :class:`Ranker`: ``score_all_items(users)``, for nets with an interaction head.
- :class:`SharesRows`: ``shared(users, items)``, what its tasks share for a batch (embedding
  rows or a shared layer's output): where per-task gradients are taken.
- :class:`EmbeddingNorms`: ``embedding_norms(users, items)``, for the SVD-style penalty.
- :class:`Gated`: ``gate_use()``, mixture-of-experts gate shares to log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Head


class Recommender(nn.Module, ABC):
    """A plain ``nn.Module`` with heads keyed by task name.

    ``heads`` names the tasks the class can serve; ``tasks`` (an instance's) those it was
    built for, a subset (by default all). ``needs_history``: its heads read the users' last
    rated items (``history=``), which the data module then puts in every batch.
    """

    heads: ClassVar[tuple[str, ...]]
    needs_history: ClassVar[bool] = False

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.heads

    @abstractmethod
    def head(self, task: str) -> Head:
        """The head serving ``task``: ``head(users, items, rows=None, history=None)``."""

    @abstractmethod
    def item_vectors(self) -> torch.Tensor:
        """One vector per item (for the projector and item-item similarity)."""

    @classmethod
    def check_tasks(cls, tasks) -> None:
        """One clear error for tasks this class has no head for (config validation calls it
        before any work)."""
        missing = [task for task in tasks if task not in cls.heads]
        if missing:
            raise ConfigError(
                f"tasks: {cls.__name__} has no head for {', '.join(missing)} (it serves "
                f"{', '.join(cls.heads)}). Fix: tasks=[{','.join(cls.heads)}], or a model "
                "with that head (model=multitask serves interaction, rating and like)."
            )


class Ranker(ABC):
    @abstractmethod
    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Interaction scores of every item for each user: (len(user_ids), num_items)."""

    def scorer(self):
        """``score_all_items`` for many calls in a row; nets may precompute item vectors."""
        return self.score_all_items


class SharesRows(ABC):
    @abstractmethod
    def shared(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> dict:
        """What the tasks share for a batch: :class:`~mtrec.mtl.shared.TableRows` or tensors,
        keyed as the heads' ``rows=`` reads them; empty when the heads share nothing."""


class EmbeddingNorms(ABC):
    @abstractmethod
    def embedding_norms(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Squared norms of the embedding and bias rows each (user, item) pair uses."""


class Gated(ABC):
    @abstractmethod
    def gate_use(self) -> dict[str, torch.Tensor]:
        """Each gate's mean share per expert (``gate/<side>/<gate>/<expert>``)."""
