"""Every use of Lightning's private internals, in one module.

Training takes a chunk of mini-batches per ``training_step`` (one optimizer step each; see
:class:`~mtrec.data.datamodule.Chunks`). Lightning counts ``training_step`` calls, so this
module makes it count optimizer steps instead: ``global_step``, the step axis of logged
metrics, the progress bar, ``max_steps`` and ``ModelCheckpoint(every_n_train_steps=...)``.
:func:`check_internals` runs when training starts and names the installed Lightning version
when one of the internals used here has moved.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from mtrec.errors import UserError

TESTED_LIGHTNING = ">=2.6,<2.7"  # as pinned in pyproject.toml

# Lightning compares log_every_n_steps with its count of training_step calls (chunks); the
# per-step losses are logged by optimizer step, so its warning would be wrong here.
warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller")


class LightningMismatch(UserError):
    """The installed Lightning lacks an internal that training relies on."""


def _internals(trainer: L.Trainer) -> dict[str, bool]:
    """Each internal used here, and whether this Lightning has it."""
    from lightning.pytorch.callbacks.progress import tqdm_progress

    loop = trainer.fit_loop.epoch_loop
    progress = getattr(getattr(loop, "manual_optimization", None), "optim_step_progress", None)
    return {
        "fit_loop.epoch_loop._batches_that_stepped": isinstance(
            getattr(loop, "_batches_that_stepped", None), int
        ),
        "fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_ready/_completed": (
            hasattr(progress, "increment_ready") and hasattr(progress, "increment_completed")
        ),
        "ModelCheckpoint._every_n_train_steps": all(
            hasattr(callback, "_every_n_train_steps") for callback in trainer.checkpoint_callbacks
        ),
        "callbacks.progress.tqdm_progress._update_n": hasattr(tqdm_progress, "_update_n"),
        "TQDMProgressBar._should_update": hasattr(TQDMProgressBar, "_should_update"),
    }


def check_internals(trainer: L.Trainer) -> None:
    missing = [name for name, present in _internals(trainer).items() if not present]
    if missing:
        raise LightningMismatch(
            f"lightning {L.__version__} is installed, but training counts optimizer steps "
            f"through internals it no longer has: {', '.join(missing)}. mtrec is tested with "
            f"lightning{TESTED_LIGHTNING}. Fix: pip install 'lightning{TESTED_LIGHTNING}'."
        )


def count_optimizer_steps(trainer: L.Trainer, steps: int, counted_by_lightning: bool) -> None:
    """After a chunk of ``steps`` optimizer steps: make ``global_step`` and the logging step
    count each of them. ``counted_by_lightning``: the steps went through
    ``LightningOptimizer.step``, which counted them already."""
    loop = trainer.fit_loop.epoch_loop
    if not counted_by_lightning:  # the bare optimizer did not tell Lightning
        progress = loop.manual_optimization.optim_step_progress
        for _ in range(steps):
            progress.increment_ready()
            progress.increment_completed()
    loop._batches_that_stepped += steps - 1  # Lightning adds one per training_step


@dataclass(frozen=True)
class StepBoundaries:
    """Where chunks of steps must end so that step-counted events fall between chunks."""

    start: int  # optimizer steps done before the epoch
    periods: tuple[int, ...]  # end a chunk at every multiple of these (checkpoint intervals)
    last: int | None  # and at max_steps

    def chunk_sizes(self, num_steps: int, size: int) -> list[int]:
        """Sizes of the chunks of one epoch of ``num_steps`` steps, at most ``size`` each."""
        sizes, step, end_of_epoch = [], self.start, self.start + num_steps
        while step < end_of_epoch:
            end = min(step + size, end_of_epoch)
            for period in self.periods:
                end = min(end, (step // period + 1) * period)
            if self.last is not None and step < self.last:
                end = min(end, self.last)
            sizes.append(end - step)
            step = end
        return sizes


def step_boundaries(trainer: L.Trainer) -> StepBoundaries:
    periods = {
        callback._every_n_train_steps
        for callback in trainer.checkpoint_callbacks
        if callback._every_n_train_steps > 0
    }
    last = trainer.max_steps if trainer.max_steps >= 0 else None
    return StepBoundaries(trainer.global_step, tuple(sorted(periods)), last)


class StepProgressBar(TQDMProgressBar):
    """The training bar counts optimizer steps (372 per ML-100K epoch at batch 256), not
    chunks of them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_done = 0

    @property
    def total_train_batches(self) -> int | float:
        chunks = self.trainer.train_dataloader
        total = super().total_train_batches
        if not hasattr(chunks, "chunk_sizes") or total == float("inf"):
            return total
        return sum(chunks.chunk_sizes()[: int(total)])

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        self.steps_done = 0
        super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n

        self.steps_done += len(batch) if isinstance(batch, list) else 1
        bar = self.train_progress_bar
        if bar is not None and self._should_update(self.steps_done, bar.total):
            _update_n(bar, self.steps_done)
            bar.set_postfix(self.get_metrics(trainer, pl_module))
