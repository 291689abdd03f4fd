"""Checkpoint selection by one score for every task: a selection setting, not a metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Scored, lower_is_better, task_of_metric
from mtrec.mtl.weighting import Weighting
from mtrec.training.module import RecommenderModule


class SelectionScore(L.Callback):
    """Logs ``name`` after each validation: the smallest ratio of a validation metric to its
    target, each turned so that above 1 means the target is met (``value / target`` for
    metrics where higher is better, ``target / value`` for errors, as the metric's task
    declares). The task furthest from its target decides, so one checkpoint is chosen for
    every head (``callbacks=selection`` monitors it). Only the tasks the run trains count: a
    task it does not have, or gives loss weight 0 (a single-task twin), is left out, so a
    twin's trained head decides alone. Runs without these metrics (a single-task net) log
    nothing.
    """

    def __init__(self, targets: Mapping[str, float], name: str = "val/combined"):
        self.targets = dict(targets)
        self.name = name
        self.prefix = name.split("/", 1)[0]

    def score(
        self, metrics: Mapping[str, torch.Tensor], tasks: Sequence[Scored]
    ) -> torch.Tensor | None:
        """The score of ``metrics``, from the targets of the metrics of ``tasks`` (the tasks
        the run trains); None when one of those metrics is missing, or none has a target."""
        ratios = []
        for metric, target in self.targets.items():
            if task_of_metric(tasks, metric) is None:
                continue
            value = metrics.get(f"{self.prefix}/{metric}")
            if value is None:
                return None
            lower = lower_is_better(tasks, metric)
            ratios.append(target / value if lower else value / target)
        if not ratios:
            return None
        return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in ratios]).min()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: RecommenderModule) -> None:
        score = self.score(trainer.callback_metrics, trained_tasks(module.tasks, module.weighting))
        if score is not None:
            module.log(self.name, score)


def trained_tasks(tasks: Sequence[Scored], weighting: Weighting) -> tuple[Scored, ...]:
    """The ``tasks`` a run trains, in their order: those ``weighting`` does not give a
    constant weight 0."""
    weights = weighting.effective_weights()
    return tuple(task for task in tasks if weights.get(task.name, 1.0) != 0)


def check_targets(targets: Mapping[str, float], tasks: Sequence[Scored], key: str) -> None:
    """One clear error for a run whose task (of ``tasks``, the run's) has no target in
    ``targets`` (at ``key``): selection would leave that task out, and a run training it
    alone would log no score."""
    found = (task_of_metric(tasks, metric) for metric in targets)
    covered = {task.name for task in found if task is not None}
    for task in tasks:
        if task.name not in covered:
            raise ConfigError(
                f"{key} has no target for the task {task.name}, so checkpoint selection "
                f"cannot weigh it: add one, e.g. +{key}.{task.main_metric}=0.8."
            )
