"""Task stopping: each task stops once its validation metric has stopped improving, so that
heads which peak at different epochs can all be at their best in one checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from mtrec.errors import ConfigError, shown
from mtrec.models.protocol import Parts

log = logging.getLogger(__name__)


class TaskStopping(L.Callback):
    """Stops a task once its validation metric (``metrics[task]``, else its main one; in its
    direction) has not improved for ``patience`` evaluations: its own parameters (its head,
    tables no other task reads) go back to their values at its best evaluation and are
    frozen, and its loss weight becomes 0, while the other tasks train on. Training ends when
    every task has stopped; at the last epoch every task still training goes back to its best
    too. So the last checkpoint holds each head at its best evaluation (what the tasks share
    as it is then): ``callbacks=task_stopping`` tests that one.

    Logged after each evaluation: ``stopped/<task>`` (0 while it trains, 1 once stopped:
    the step in TensorBoard is when it stopped), and a line when a task stops.
    """

    def __init__(self, patience: int = 5, metrics: Mapping[str, str] | None = None):
        check_task_stopping(patience)
        self.patience = patience
        self.metrics = dict(metrics or {})  # a task the run does not train: left out
        self.best: dict[str, float] = {}
        self.waited: dict[str, int] = {}
        self.stopped: dict[str, int] = {}  # task -> the epoch it stopped after (from 1)
        self.at_best: dict[str, list[torch.Tensor]] = {}  # its own parameters at its best

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        check_task_stopping(self.patience, None, type(module.net), module.weighting)

    def state_dict(self) -> dict:
        return {"best": self.best, "waited": self.waited, "stopped": self.stopped,
                "at_best": self.at_best}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.waited = dict(state_dict["best"]), dict(state_dict["waited"])
        self.stopped, self.at_best = dict(state_dict["stopped"]), dict(state_dict["at_best"])

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for task in self.stopped:  # a resumed run: its stopped tasks stay stopped
            module.stop_task(task)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        for task in module.tasks:
            if task.name in self.stopped:
                continue
            metric = self.metrics.get(task.name, task.main_metric)
            value = trainer.callback_metrics.get(f"val/{metric}")
            if value is None:
                raise ConfigError(
                    f"callbacks=task_stopping reads val/{metric}, which this run does not "
                    "log: give it validation rows (e.g. data.val_fraction=0.05), or name one "
                    f"of {task.name}'s metrics in callbacks.task_stopping.metrics."
                )
            value = float(value)
            best = self.best.get(task.name)
            lower = task.is_lower_better(metric)
            if best is None or (value < best if lower else value > best):
                self.best[task.name], self.waited[task.name] = value, 0
                own = module.net.task_parameters(task.name)
                self.at_best[task.name] = [p.detach().clone() for p in own]
                continue
            self.waited[task.name] += 1
            if self.waited[task.name] >= self.patience:
                self._stop(module, task, epoch)
        if epoch == trainer.max_epochs:  # the last epoch: every task back at its best
            for task in module.tasks:
                if task.name not in self.stopped:
                    self._stop(module, task, epoch)
        values = {f"stopped/{t.name}": float(t.name in self.stopped) for t in module.tasks}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        if len(self.stopped) == len(module.tasks):
            trainer.should_stop = True

    def _stop(self, module: L.LightningModule, task, epoch: int) -> None:
        with torch.no_grad():
            own = module.net.task_parameters(task.name)
            for parameter, value in zip(own, self.at_best[task.name], strict=True):
                parameter.copy_(value)
        module.stop_task(task.name)
        self.stopped[task.name] = epoch
        log.info(
            "Task %s stopped after epoch %d: no better val/%s than %.4f for %d evaluations; "
            "its own parameters are back at that value's and frozen.",
            task.name, epoch, self.metrics.get(task.name, task.main_metric),
            self.best[task.name], self.patience,
        )  # fmt: skip


def check_task_stopping(patience, val_fraction=None, net_class=None, weighting=None) -> None:
    """One clear error for task stopping that cannot work, before any work: a bad
    ``patience``, no validation rows, a net that does not name each task's own parameters,
    a weighting that combines gradients (a weight of 0 is not one of its settings)."""
    if type(patience) is not int or patience < 1:
        raise ConfigError(
            f"callbacks.task_stopping.patience={shown(patience)} is not valid: use a "
            "positive integer (evaluations without improvement before a task stops)."
        )
    if val_fraction == 0:
        raise ConfigError(
            "callbacks=task_stopping compares validation metrics, and data.val_fraction=0 "
            "keeps no validation rows: use e.g. data.val_fraction=0.05."
        )
    if net_class is not None and not issubclass(net_class, Parts):
        raise ConfigError(
            f"callbacks=task_stopping freezes a stopped task's own parameters, and "
            f"{net_class.__name__} does not name them: use model=multitask."
        )
    if weighting is not None and weighting.task_gradients:
        raise ConfigError(
            "callbacks=task_stopping sets a stopped task's loss weight to 0, which "
            f"{type(weighting).__name__} (it combines the tasks' gradients) cannot take: use "
            "a weighting of losses, e.g. weighting=fixed."
        )
