"""Callbacks of the template: the per-run metrics record, and the declaration of its tasks."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from mtrec.mtl.tasks import Scored, lower_is_better
from mtrec.runs.folder import METRICS, write_metrics, write_tasks


class MetricsHistory(L.Callback):
    """Records held-out metrics (and the epoch's ``mtl/`` gradient diagnostics) after each
    evaluation and writes ``metrics.json``.

    The file holds ``final`` (last value of every metric; with a selected checkpoint, see
    ``callbacks=selection``, its validation and test metrics), ``best`` (best value and the
    epoch it was reached, epochs counted from 1) and ``history`` (one entry per evaluation).
    The history travels in checkpoints, so a resumed run writes the whole record.

    ``best`` takes each metric's direction from the module's tasks (``module.tasks``, kept
    when the trainer sets up, for fitting, validating or testing alike; a metric of none of
    them counts as better higher). When fitting starts, ``tasks.json`` beside ``metrics.json``
    records those tasks' declarations, which the sweep's report reads
    (:func:`mtrec.runs.folder.read_tasks`).
    """

    def __init__(self, path: str | Path = METRICS):
        self.path = Path(path)
        self.history: list[dict[str, float]] = []
        self.selected: dict[str, float] = {}
        self.tasks: tuple[Scored, ...] = ()  # the module's, from setup on

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.tasks = tuple(module.tasks)

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # the tasks kept at setup
            write_tasks(self.path.parent, self.tasks)

    def state_dict(self) -> dict:
        return {"history": self.history}  # saved in checkpoints: a resumed run continues it

    def load_state_dict(self, state_dict: dict) -> None:
        # Resuming starts from an empty record; testing an earlier (best) checkpoint after
        # training must not cut the record back to that checkpoint's epoch.
        if len(state_dict["history"]) > len(self.history):
            self.history = list(state_dict["history"])

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            diagnostics = getattr(module, "epoch_diagnostics", {})  # this epoch's mtl/ values
            extra = {name: float(value) for name, value in diagnostics.items()}
            self._record(trainer, epoch=trainer.current_epoch + 1, extra=extra)
        elif trainer.state.fn == TrainerFn.VALIDATING:  # the selected checkpoint, re-evaluated
            self.selected = self._values(trainer)
            self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer, epoch=trainer.current_epoch)

    def _record(self, trainer: L.Trainer, epoch: int, extra: dict | None = None) -> None:
        self.history.append({"epoch": epoch, **self._values(trainer), **(extra or {})})
        self._write(trainer)

    @staticmethod
    def _values(trainer: L.Trainer) -> dict[str, float]:
        return {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith(("val/", "test/"))
        }

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            write_metrics(self.path, self.summary())

    def summary(self) -> dict:
        final: dict[str, float] = {}
        best: dict[str, dict[str, float]] = {}
        for entry in self.history:
            for name, value in entry.items():
                if name == "epoch" or math.isnan(value):
                    continue
                final[name] = value
                lower = lower_is_better(self.tasks, name)
                current = best.get(name)
                if current is None or (
                    value < current["value"] if lower else value > current["value"]
                ):
                    best[name] = {"value": value, "epoch": entry["epoch"]}
        final.update(self.selected)
        return {"final": final, "best": best, "history": self.history}
