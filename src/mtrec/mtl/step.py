"""The step engine: batch -> each task's loss -> each task's gradient on what the tasks share
-> the strategy's weights -> one gradient. No Lightning here: the LightningModule calls
:meth:`StepEngine.step` once per optimizer step and steps the optimizer itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from mtrec.compile import compile_or_eager
from mtrec.errors import ConfigError
from mtrec.models.protocol import SharesRows
from mtrec.mtl.diagnostics import GradientDiagnostics
from mtrec.mtl.objective import PENALTY, Objective
from mtrec.mtl.shared import TaskCopies
from mtrec.mtl.weighting import Weighting

LOSS = "loss"  # the weighted total, beside each task's loss
Backward = Callable[[torch.Tensor], None]  # loss.backward, or Lightning's manual_backward


class StepEngine:
    """One training step of ``net`` on ``objective``'s tasks, weighted by ``weighting``.

    What the net offers is checked once here: a head per task (the objective's check) and
    whether it shares anything between its tasks (:class:`~mtrec.models.protocol.SharesRows`).
    Per-task gradients on what the tasks share are taken when the strategy needs them or
    ``diagnostics is True``; the diagnostics are kept whenever they are taken, unless
    ``diagnostics is False``. ``compile`` runs the objective and the loss weights (forward and
    backward) through ``torch.compile`` (:meth:`use_compiler`). ``read_once``: the shared rows
    are gathered once per step and every lookup reads them (sparse tables: one sparse gradient
    per table).

    Plain object, not a module: the net, objective and weighting stay registered where the
    caller keeps them (and their checkpoint keys with them).
    """

    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        weighting: Weighting,
        compile: bool = False,
        diagnostics: bool | str = "auto",
        read_once: bool = False,
    ):
        if diagnostics not in (True, False, "auto"):
            raise ConfigError(
                f"model.diagnostics={diagnostics} is not valid: use auto (where per-task "
                "gradients are taken anyway), true or false."
            )
        objective.check_net(net)
        self.net, self.objective, self.weighting = net, objective, weighting
        self.tasks = objective.names
        weighting.bind(objective.tasks)
        shares = len(self.tasks) >= 2 and isinstance(net, SharesRows)
        weighting.check(self.tasks, shares)
        # per-task gradients on what the tasks share: what the weighting needs, or asked for
        self.task_gradients = shares and (weighting.task_gradients or diagnostics is True)
        self.read_once = read_once and not self.task_gradients and isinstance(net, SharesRows)
        self.diagnostics = (
            GradientDiagnostics(self.tasks)
            if self.task_gradients and diagnostics is not False
            else None
        )
        self.losses = self.weighted_losses
        if compile:
            self.use_compiler()
        self._constant_weights: torch.Tensor | None = None
        self._fields_checked = False
        self.stopped: set[str] = set()  # tasks whose loss no longer counts (task stopping)

    def stop(self, task: str) -> None:
        """From now on ``task``'s loss is left out of the weighted total (its weight 0)."""
        if self.weighting.task_gradients:
            raise ConfigError(
                f"Stopping task {task} sets its loss weight to 0, which a strategy combining "
                "the tasks' gradients cannot take: use a weighting of losses (e.g. "
                "weighting=fixed) with callbacks=task_stopping."
            )
        self.stopped.add(task)

    def use_compiler(self) -> None:
        """Run the objective and the loss weights (forward and backward) through
        ``torch.compile``, and let the strategy compile its own per-step work."""
        self.losses = compile_or_eager(self.weighted_losses)
        self.weighting.use_compiler()

    def weighted_losses(
        self, batch: Mapping[str, torch.Tensor], shared=None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Each task's loss, the penalty and the weighted total (``"loss"``) of a batch, and
        the loss weights when they are tensors (learned or drawn); ``shared``: each task's
        copy of what the tasks share (see :class:`Objective`)."""
        out = self.objective(self.net, batch, shared)
        task_losses = [out[name] for name in self.tasks]
        weights = self.weighting.loss_weights(torch.stack(task_losses))
        total = 0.0
        for i, loss in enumerate(task_losses):  # in task order: the sum the reference computes
            if self.tasks[i] not in self.stopped:
                total = total + weights[i] * loss
        extra = self.weighting.extra_loss()
        if isinstance(extra, torch.Tensor):
            total = total + extra
        if PENALTY in out:
            total = total + out[PENALTY]
        out[LOSS] = total
        return out, weights.detach() if isinstance(weights, torch.Tensor) else None

    def check_fields(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Each task's batch fields are in the batch: checked on the first step, so a data
        module that lacks one (ratings, say) gets one message instead of a KeyError."""
        for task in self.objective.tasks:
            missing = [field for field in task.fields if field not in batch]
            if missing:
                raise ConfigError(
                    f"tasks: {task.name} reads the batch fields {', '.join(missing)}, which "
                    f"this data module's batches lack (they have {', '.join(batch)}). Fix: a "
                    f"data module that gives them, or tasks without {task.name}."
                )
        self._fields_checked = True

    def step(self, batch: Mapping[str, torch.Tensor], backward: Backward) -> dict:
        """One step's losses and gradients (the caller steps the optimizer)."""
        if not self._fields_checked:
            self.check_fields(batch)
        if self.read_once:
            return self._step_reading_rows_once(batch, backward)
        copies = None
        if self.task_gradients:
            shared = self.net.shared(batch["users"], batch["items"])
            copies = TaskCopies(shared, self.tasks) if shared else None  # separate: nothing
        losses, weights = self.losses(batch, copies.copies) if copies else self.losses(batch)
        backward(losses[LOSS])
        if copies is None:
            self.after_backward(losses)
            return losses
        combined, in_combination = self.weighting.shared_gradient(
            copies.received, copies.gram, copies.parts
        )
        copies.send(combined)
        self.after_backward(losses, copies.received, copies.gram, weights, in_combination)
        return losses

    def after_backward(
        self,
        losses: Mapping[str, torch.Tensor],
        received: torch.Tensor | None = None,
        gram: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        in_combination: torch.Tensor | None = None,
    ) -> None:
        """After a step's gradients: the strategy's hook (with each task's gradient on what
        the tasks share, if taken) and the diagnostics of the weights that combined them."""
        self.weighting.after_backward(received, losses)
        if received is not None and self.diagnostics is not None:
            weights = self.constant_weights(received) if weights is None else weights
            effective = weights if in_combination is None else weights * in_combination
            self.diagnostics.update(gram, weights, effective)

    def _step_reading_rows_once(self, batch: Mapping[str, torch.Tensor], backward: Backward):
        """A step with sparse tables: the rows the tasks share are gathered once and every
        lookup of the step reads them, so each table gets one sparse gradient instead of one
        per lookup, added up by autograd (ML-25M shape, 8,192 rows: 16 -> 13 ms per step)."""
        shared = self.net.shared(batch["users"], batch["items"])
        single = TaskCopies(shared, ("all",)) if shared else None  # one copy for every task
        rows = dict.fromkeys(self.tasks, single.copies["all"]) if single else None
        losses, _ = self.losses(batch, rows) if single else self.losses(batch)
        backward(losses[LOSS])
        if single:
            single.send(single.received[0])
        self.after_backward(losses)
        return losses

    def constant_weights(self, like: torch.Tensor) -> torch.Tensor:
        """Loss weights given as plain numbers (fixed weights) as a tensor, built once."""
        if self._constant_weights is None:
            known = self.weighting.effective_weights()
            weights = [float(known.get(task, 1.0)) for task in self.tasks]
            self._constant_weights = torch.tensor(weights).to(like)
        return self._constant_weights

    def epoch_diagnostics(self) -> dict[str, torch.Tensor]:
        """This epoch's ``mtl/...`` values: gradient diagnostics and the strategy's own."""
        values = self.diagnostics.epoch_means() if self.diagnostics is not None else {}
        for name, value in self.weighting.logged().items():
            values[f"mtl/{name}"] = value
        return values
