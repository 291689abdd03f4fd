"""The weighting interface, fixed weights (the reference study's) and one task alone (twins).

A strategy turns a step's task losses into gradients in two places, as TorchJD's aggregators
do (Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024):

- :meth:`Weighting.loss_weights`: each task's weight from the stacked losses (traced into the
  compiled step with the objective); the step's loss is ``sum_t w_t L_t`` plus
  :meth:`Weighting.extra_loss` (a learned strategy's own term) plus the penalties;
- :meth:`Weighting.gradient_weights`: where each task's gradient on what the tasks share is
  taken (:class:`mtrec.mtl.shared.TaskCopies`), the weights that combine them, from their Gram
  matrix or the gradient rows; ``None``: their sum, what one backward pass gives.

Both work for any number of tasks, in the order :meth:`Weighting.bind` gave them, and never
change what they are handed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Task


class Weighting(nn.Module):
    """The interface every strategy implements (the default: every weight 1, summed)."""

    #: True when the strategy needs each task's gradient on what the tasks share to train
    #: (gradient-level strategies, GradNorm); others get them only for diagnostics.
    task_gradients = False
    #: True when :meth:`after_backward` gives the strategy's own parameters their gradient
    #: (GradNorm): the optimizer steps after that hook, so the step is not compiled whole.
    sets_own_gradients = False

    def __init__(self) -> None:
        super().__init__()
        self.tasks: tuple[Task, ...] = ()

    def bind(self, tasks: Sequence[Task]) -> None:
        """The tasks the strategy weighs, in order; called once, before training (and before
        a checkpoint is loaded: state sized by the number of tasks is made here)."""
        self.tasks = tuple(tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor | Sequence[float]:
        """Each task's loss weight from the task losses (one per task, in order)."""
        return torch.ones_like(losses)

    def extra_loss(self) -> torch.Tensor | float:
        """A term the strategy adds to the step's loss (e.g. uncertainty's ``½ sum s``)."""
        return 0.0

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor | None:
        """The weights of each task's gradient on what the tasks share (``received``: one row
        per task, each already times its loss weight; ``gram``: their Gram matrix), or
        ``None`` for their sum."""
        return None

    def shared_gradient(
        self, received: torch.Tensor, gram: torch.Tensor, parts: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The one gradient the shared part gets, and the weights that made it (``None``: not
        a weighting of the rows; strategies like TorchJD's GradDrop override this).
        ``parts``: the lengths of the shared parts (the user rows, the item rows, ...) that
        make up each row of ``received``, in order (empty: one part)."""
        weights = self.gradient_weights(received, gram)
        return (received.sum(0) if weights is None else weights @ received), weights

    def after_backward(
        self, received: torch.Tensor | None, losses: Mapping[str, torch.Tensor]
    ) -> None:
        """Called after each backward pass with what each task's copy received (``None``
        where nothing is shared) and the task losses: learned weights take their gradient."""

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called once per epoch with each task's mean loss (strategies that keep histories)."""

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to renormalise learned weights)."""

    def effective_weights(self) -> dict[str, float]:
        """Each task's constant weight, for strategies that have them (fixed weights)."""
        return {}

    def logged(self) -> dict[str, torch.Tensor]:
        """The strategy's own values to log each epoch under ``mtl/`` (learned parameters)."""
        return {}

    def check(self, tasks: Sequence[str], shares: bool) -> None:
        """One clear error, before training, for tasks this strategy cannot serve."""

    def use_compiler(self) -> None:
        """Called once when the step is compiled (``model.compile``): a strategy may compile
        its own per-step work (a solver on the Gram matrix)."""


EPSILON = 1e-8  # keeps a loss or a norm of 0 out of logarithms and divisions


def check_several_tasks(tasks: Sequence[str], what: str) -> None:
    """One message for a strategy that weighs tasks against each other in a one-task run."""
    if len(tasks) < 2:
        raise ConfigError(f"{what} several tasks: this run trains one. Use weighting=fixed.")


def fraction(name: str, value: float, example: str, closed: bool = False) -> float:
    """``value`` as a float when it lies in [0, 1) (``closed``: [0, 1]); else one message
    naming the setting and an example."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(
            f"weighting.{name}={value} is not valid: use a number in {interval}, e.g. {example}."
        )
    return float(value)


class FixedWeighting(Weighting):
    """Constant weights: ``sum_t w_t L_t + penalty``. Each task's weight is its
    declaration's (:attr:`~mtrec.mtl.tasks.Task.default_weight`: the reference's λF 0.99 and
    λR 0.01) unless ``weights`` gives one (``weighting.weights.<task>``; the reference's keys
    ``model.factorization_weight`` and ``model.regression_weight`` set the first two). One
    weight of the trained tasks may be null: 1 minus the others. A weight given for a task
    the run does not train, or a trained task without a weight, is refused before any work.
    """

    def __init__(self, weights: Mapping[str, float | None] | None = None):
        super().__init__()
        self.given = dict(weights or {})
        self.weights: dict[str, float] = {}

    def check(self, tasks: Sequence[str], shares: bool) -> None:
        unknown = [name for name in self.given if name not in tasks]
        if unknown:
            name = unknown[0]
            raise ConfigError(
                f"weighting.weights.{name}={self.given[name]}: this run does not train {name} "
                f"(it trains {', '.join(tasks)}). Fix: leave the weight out, or add {name} to "
                f"tasks=[{','.join((*tasks, name))}]."
            )

    def chosen(self, tasks: Sequence[Task]) -> dict[str, float | None]:
        """Each task's weight as given, else as its task declares it."""
        chosen = {}
        for task in tasks:
            if task.name not in self.given and task.default_weight is None:
                raise ConfigError(
                    f"tasks.{task.name} declares no default weight and weighting.weights gives "
                    f"none: give it one, e.g. weighting.weights.{task.name}=0.1."
                )
            chosen[task.name] = self.given.get(task.name, task.default_weight)
        return chosen

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        given = self.chosen(tasks)
        unset = [name for name, weight in given.items() if weight is None]
        if len(unset) > 1:
            raise ConfigError(
                f"weighting.weights: {', '.join(unset)} are all null; give all but one a value."
            )
        rest = sum(float(weight) for weight in given.values() if weight is not None)
        # a weight left unset (null) is what the others leave of 1
        self.weights = {
            name: (1.0 - rest if weight is None else float(weight))
            for name, weight in given.items()
        }

    def loss_weights(self, losses: torch.Tensor) -> list[float]:
        return [self.weights[name] for name in self.names]  # plain numbers: the reference's sum

    def effective_weights(self) -> dict[str, float]:
        return dict(self.weights)


class SingleTask(FixedWeighting):
    """Task ``task`` alone (weight 1, every other task 0): the single-task twin of a run
    (``hydra/sweeper=twins``), with the same net and data."""

    def __init__(self, task: str):
        super().__init__({task: 1.0})
        self.task = task

    def chosen(self, tasks: Sequence[Task]) -> dict[str, float | None]:
        return {task.name: float(task.name == self.task) for task in tasks}

    def check(self, tasks: Sequence[str], shares: bool) -> None:
        if self.task not in tasks:
            raise ConfigError(
                f"weighting.task={self.task}: this run trains {', '.join(tasks)}. Fix: "
                f"weighting.task=<one of them>, or add {self.task} to tasks=[...]."
            )
