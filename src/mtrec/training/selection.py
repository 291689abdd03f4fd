"""Checkpoint selection by one score for both tasks: a selection setting, not a metric."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from mtrec.mtl.tasks import lower_is_better, task_of_metric


class SelectionScore(L.Callback):
    """Logs ``name`` after each validation: the smallest ratio of a validation metric to its
    target, each turned so that above 1 means the target is met (``value / target`` for
    metrics where higher is better, ``target / value`` for errors). The task furthest from its
    target decides, so one checkpoint is chosen for both heads (``callbacks=selection``
    monitors it). A task the run does not train (loss weight 0: a single-task twin) is left
    out, so the trained head decides alone. Runs without these metrics (a single-task net)
    log nothing.
    """

    def __init__(self, targets: Mapping[str, float], name: str = "val/combined"):
        self.targets = dict(targets)
        self.name = name
        self.prefix = name.split("/", 1)[0]

    def score(
        self, metrics: Mapping[str, torch.Tensor], untrained: set[str] = frozenset()
    ) -> torch.Tensor | None:
        ratios = []
        for metric, target in self.targets.items():
            task = task_of_metric(metric)
            if task is not None and task.name in untrained:
                continue
            value = metrics.get(f"{self.prefix}/{metric}")
            if value is None:
                return None
            ratios.append(target / value if lower_is_better(metric) else value / target)
        if not ratios:
            return None
        return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in ratios]).min()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        weighting = getattr(module, "weighting", None)
        weights = weighting.effective_weights() if weighting is not None else {}
        untrained = {task for task, weight in weights.items() if weight == 0}
        score = self.score(trainer.callback_metrics, untrained)
        if score is not None:
            module.log(self.name, score)
