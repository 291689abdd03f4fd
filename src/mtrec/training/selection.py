"""Checkpoint selection by one score for both tasks: a selection setting, not a metric."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import lightning as L
import torch

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import lower_is_better, task_named, task_of_metric
from mtrec.mtl.weighting import Weighting
from mtrec.training.module import RecommenderModule


class SelectionScore(L.Callback):
    """Logs ``name`` after each validation: the smallest ratio of a validation metric to its
    target, each turned so that above 1 means the target is met (``value / target`` for
    metrics where higher is better, ``target / value`` for errors). The task furthest from its
    target decides, so one checkpoint is chosen for every head (``callbacks=selection``
    monitors it). Only the tasks the run trains count: a task it does not have, or gives loss
    weight 0 (a single-task twin), is left out, so a twin's trained head decides alone. Runs
    without these metrics (a single-task net) log nothing.
    """

    def __init__(self, targets: Mapping[str, float], name: str = "val/combined"):
        self.targets = dict(targets)
        self.name = name
        self.prefix = name.split("/", 1)[0]

    def score(
        self, metrics: Mapping[str, torch.Tensor], trained: Collection[str] | None = None
    ) -> torch.Tensor | None:
        """The score of ``metrics``, from the targets of the ``trained`` tasks (None: all)."""
        ratios = []
        for metric, target in self.targets.items():
            task = task_of_metric(metric)
            if trained is not None and (task is None or task.name not in trained):
                continue
            value = metrics.get(f"{self.prefix}/{metric}")
            if value is None:
                return None
            ratios.append(target / value if lower_is_better(metric) else value / target)
        if not ratios:
            return None
        return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in ratios]).min()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: RecommenderModule) -> None:
        score = self.score(trainer.callback_metrics, trained_tasks(module.tasks, module.weighting))
        if score is not None:
            module.log(self.name, score)


def trained_tasks(tasks: Collection[str], weighting: Weighting) -> set[str]:
    """The ``tasks`` a run trains: those ``weighting`` does not give a constant weight 0."""
    weights = weighting.effective_weights()
    return {task for task in tasks if weights.get(task, 1.0) != 0}


def check_targets(targets: Mapping[str, float], tasks: Collection[str], key: str) -> None:
    """One clear error for a run whose task has no target in ``targets`` (at ``key``):
    selection would leave that task out, and a run training it alone would log no score."""
    covered = {task.name for task in map(task_of_metric, targets) if task is not None}
    for name in tasks:
        if name not in covered:
            metric = task_named(name).main_metric
            raise ConfigError(
                f"{key} has no target for the task {name}, so checkpoint selection cannot "
                f"weigh it: add one, e.g. +{key}.{metric}=0.8."
            )
