"""Checkpoint selection by one score for both tasks: a selection setting, not a metric."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from mtrec.tasks import lower_is_better


class SelectionScore(L.Callback):
    """Logs ``name`` after each validation: the smallest ratio of a validation metric to its
    target, each turned so that above 1 means the target is met (``value / target`` for
    metrics where higher is better, ``target / value`` for errors). The task furthest from its
    target decides, so one checkpoint is chosen for both heads (``callbacks=selection``
    monitors it). Runs without these metrics (a single-task net) log nothing.
    """

    def __init__(self, targets: Mapping[str, float], name: str = "val/combined"):
        self.targets = dict(targets)
        self.name = name
        self.prefix = name.split("/", 1)[0]

    def score(self, metrics: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        ratios = []
        for metric, target in self.targets.items():
            value = metrics.get(f"{self.prefix}/{metric}")
            if value is None:
                return None
            ratios.append(target / value if lower_is_better(metric) else value / target)
        return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in ratios]).min()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        score = self.score(trainer.callback_metrics)
        if score is not None:
            module.log(self.name, score)
