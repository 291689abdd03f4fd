"""``gates.png`` of a mixture-of-experts run, drawn by the run itself at the end of fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from mtrec.runs.figures import write_gate_figure
from mtrec.training.callbacks import MetricsHistory

log = logging.getLogger(__name__)


class GateFigure(L.Callback):
    """Rewrites ``gates.png`` in ``dirpath`` (the run folder) at the end of fit, from the
    run's metrics history (the ``mtl/gate/...`` values the net logs each epoch, see
    :class:`~mtrec.training.callbacks.MetricsHistory`): each gate's share per expert and epoch
    (:func:`~mtrec.runs.figures.gate_figure`). Nets without gates leave no file."""

    def __init__(self, dirpath: str | Path = "."):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        history = next((c.history for c in trainer.callbacks if isinstance(c, MetricsHistory)), [])
        written = write_gate_figure(self.dirpath, history)
        if written:
            log.info("Gate use per epoch: %s", written)
