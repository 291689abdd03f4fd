"""Every use of Lightning's private internals, in one module.

Training takes a chunk of mini-batches per ``training_step`` (one optimizer step each; see
:class:`~mtrec.data.datamodule.Chunks`). Lightning counts ``training_step`` calls, so this
module makes it count optimizer steps instead: ``global_step``, the step axis of logged
metrics, the progress bar, ``max_steps`` and ``ModelCheckpoint(every_n_train_steps=...)``.
:func:`check_internals` runs when training starts and names the installed Lightning version
when one of the internals used here has moved.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from mtrec.errors import UserError

TESTED_LIGHTNING = ">=2.6,<2.7"  # as pinned in pyproject.toml

# Lightning compares log_every_n_steps with its count of training_step calls (chunks); the
# per-step losses are logged by optimizer step, so its warning would be wrong here.
warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller")
# Lightning's own code calls an API this torch deprecates: nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# A run continues in its own folder, next to its checkpoints, by design (mtrec.runs.rerun).
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

log = logging.getLogger(__name__)


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
    chunks of them.

    Jobs of a sweep that run side by side (:func:`mtrec.runs.sweep.parallel_jobs`) would draw
    their bars over each other on the one terminal: there each job logs a line instead (its
    name comes first, see ``hydra.job_logging``) after its first and last epoch and at most
    every ``log_every_seconds`` between, with the time per epoch and the tasks' held-out
    metrics. ``refresh_rate=0`` shows neither.

    Ctrl-C stops the fit after the chunk of steps (or the evaluation) under way.
    """

    def __init__(self, *args, log_every_seconds: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_done = 0
        self.log_every_seconds = log_every_seconds
        self.lines = False  # log lines instead of drawing bars
        self._epoch_started = self._first_ended = self._last_line = 0.0
        self._first_epoch = 0  # of this fit (a resumed run starts later)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if _jobs().parallel_jobs() and self.is_enabled:
            self.lines = True
            self.disable()

    def on_train_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_start(trainer, *args)
        self._first_epoch = trainer.current_epoch
        _jobs().stop_at_safe_points(True)

    def on_train_end(self, *args) -> None:
        super().on_train_end(*args)
        _jobs().stop_at_safe_points(False)

    @staticmethod
    def _stop_if_interrupted() -> None:
        """Ctrl-C during the fit: stop here, between chunks of steps, where no lock is held
        (see :func:`mtrec.runs.sweep.stop_at_safe_points`); Lightning then shuts down."""
        if _jobs().job_interrupted():
            _jobs().stop_at_safe_points(False)
            raise KeyboardInterrupt

    @property
    def total_train_batches(self) -> int | float:
        chunks = self.trainer.train_dataloader
        total = super().total_train_batches
        if not hasattr(chunks, "chunk_sizes") or total == float("inf"):
            return total
        return sum(chunks.chunk_sizes()[: int(total)])

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        self.steps_done = 0
        self._epoch_started = time.monotonic()
        super().on_train_epoch_start(trainer, *args)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.lines:
            return
        now, epoch, total = time.monotonic(), trainer.current_epoch + 1, trainer.max_epochs
        this_epoch = now - self._epoch_started
        first, last = epoch == self._first_epoch + 1, total is not None and 0 < total <= epoch
        if first:
            self._first_ended = now
        if first or last or now - self._last_line >= self.log_every_seconds:
            self._last_line = now
            # the first epoch of a launch also compiles: the estimate leaves it out once it can
            later = epoch - self._first_epoch - 1
            per_epoch = (now - self._first_ended) / later if later else this_epoch
            log.info("%s", epoch_line(epoch, total, per_epoch, this_epoch, trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        """A stopped fit (Ctrl-C, a diverged loss) ends its bars' line, so that the message
        that follows starts a line of its own."""
        _jobs().stop_at_safe_points(False)
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar):
            if bar is not None:
                bar.close()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, *args)
        self._stop_if_interrupted()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n

        self._stop_if_interrupted()
        self.steps_done += len(batch) if isinstance(batch, list) else 1
        bar = self.train_progress_bar
        if bar is not None and self._should_update(self.steps_done, bar.total):
            _update_n(bar, self.steps_done)
            bar.set_postfix(self.get_metrics(trainer, pl_module))


def _jobs():
    """:mod:`mtrec.runs.sweep` (jobs, the terminal, Ctrl-C), imported when first needed: it
    imports the modules of the sweep summary."""
    from mtrec.runs import sweep

    return sweep


def epoch_line(
    epoch: int, total: int | None, per_epoch: float, this_epoch: float, trainer: L.Trainer
) -> str:
    """``epoch 25/200 (0.41 s; about 1 min 12 s left): test/mrr=0.0605 test/mse=0.9168``:
    epochs counted from 1, as ``metrics.json`` does; the main held-out metric of each task."""
    held_out = {
        name: float(value)
        for name, value in trainer.callback_metrics.items()
        if name.startswith(("val/", "test/")) and "/gate/" not in name
    }
    tasks = trainer.lightning_module.tasks
    main = {f"{prefix}/{task.main_metric}" for task in tasks for prefix in ("val", "test")}
    shown = {name: value for name, value in held_out.items() if name in main} or held_out
    left = ""
    if total is not None and total > 0 and epoch < total:
        left = f"; about {_duration((total - epoch) * per_epoch)} left"
    epochs = f"epoch {epoch}/{total}" if total is not None and total > 0 else f"epoch {epoch}"
    metrics = " ".join(f"{name}={value:.4f}" for name, value in shown.items())
    return f"{epochs} ({this_epoch:.2f} s{left})" + (f": {metrics}" if metrics else "")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
