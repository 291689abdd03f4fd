"""A Hydra callback that records every job's outcome and keeps the sweep summary current; what
the terminal shows of jobs that run side by side; and Ctrl-C, which stops a run or a sweep so
that running the same command again continues it."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtrec.runs.folder import (
    LAST_CHECKPOINT,
    DamagedCheckpoint,
    last_checkpoint,
    read_job,
    read_metrics,
    write_job,
)
from mtrec.runs.folder import run_folders as job_folders
from mtrec.runs.report import write_report
from mtrec.runs.rerun import CONTINUE, REFUSE, SKIP, Rerun, plan_rerun

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # job.json status of a job that Ctrl-C stopped, or kept from starting
NOT_STARTED = "not started: the sweep was interrupted before this job began"
# In the sweep folder while an interrupted sweep winds down: jobs that begin after it do no work.
STOP_MARKER = ".interrupted"


def _multirun(hydra_cfg: DictConfig) -> bool:
    return hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"


# --- jobs side by side in one terminal ------------------------------------------------------


def parallel_jobs() -> bool:
    """Whether this process runs a job of a sweep whose jobs run side by side, writing to one
    terminal (the joblib launcher with ``n_jobs`` other than 1)."""
    if not HydraConfig.initialized() or not _multirun(HydraConfig.get()):
        return False
    n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if not isinstance(n_jobs, int):
        return False
    if n_jobs < 0:  # joblib: -1 is every core, -2 all but one, ...
        n_jobs = (os.cpu_count() or 1) + 1 + n_jobs
    return n_jobs > 1


def job_name() -> str:
    """The job's folder name, e.g. ``sharing=True,weight=0.99``."""
    return Path(HydraConfig.get().runtime.output_dir).name


class ConsoleFormatter(logging.Formatter):
    """The console's lines of a job (``hydra.job_logging``). A single run, or jobs one at a
    time: ``fmt`` as given. Jobs side by side: one line per message, starting with the time and
    the job's name; the rest of a message of many lines (the config, a traceback) is left to
    the job's log file, which the line names."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self.job = job_name() if parallel_jobs() else None
        self.log_file = f"{HydraConfig.get().job.name}.log" if self.job else ""

    def format(self, record: logging.LogRecord) -> str:
        if self.job is None:
            return super().format(record)
        lines = [line for line in record.getMessage().splitlines() if line.strip()] or [""]
        more = len(lines) - 1 + (1 if record.exc_info else 0)
        note = f" (and {more} more lines in its {self.log_file})" if more else ""
        level = f"[{record.levelname}] " if record.levelno >= logging.WARNING else ""
        return f"[{self.formatTime(record, '%H:%M:%S')}][{self.job}] {level}{lines[0]}{note}"


class QuietLightning(logging.Filter):
    """Jobs side by side: Lightning's notes (accelerators found, model summary, tips) go to
    each job's log file only; its warnings still reach the console."""

    def __init__(self) -> None:
        super().__init__()
        self.active = parallel_jobs()

    def filter(self, record: logging.LogRecord) -> bool:
        lightning = record.name.startswith(("lightning", "pytorch_lightning"))
        return not (self.active and lightning and record.levelno < logging.WARNING)


def _log_through_job() -> None:
    """Jobs side by side: Lightning's messages and Python's warnings go through the job's
    logging (its name on the console, its log file) instead of straight to the terminal."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # the ones Lightning adds on import
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


# --- Ctrl-C -----------------------------------------------------------------------------------


@dataclass
class _Job:
    """This process's current job: whether Ctrl-C stopped it, or an interrupted sweep kept it
    from starting; how often Ctrl-C was pressed; whether a fit is running that stops itself at
    its next chunk of steps (:func:`stop_at_safe_points`)."""

    interrupted: bool = False
    not_started: bool = False
    presses: int = 0
    safe_points: bool = False


_job = _Job()
_handlers: dict[str, Any] = {}  # SIGINT handlers to put back: "sweep" (the launcher's), "job"


def job_interrupted() -> bool:
    """Whether Ctrl-C stopped the current job (Lightning turns it into ``SystemExit(1)``)."""
    return _job.interrupted


def stop_at_safe_points(active: bool) -> None:
    """While ``active`` (a fit whose progress bar raises ``KeyboardInterrupt`` after a chunk of
    steps once :func:`job_interrupted`), Ctrl-C only asks the fit to stop there. Raised at any
    bytecode instead, it can leave a lock of a writer thread (TensorBoard's) held, and the
    job then hangs as it closes its logs; a second press still stops it at once."""
    _job.safe_points = active


def sweep_stopped() -> bool:
    """Whether the sweep of the current job was interrupted before the job began: then the job
    does no work, and its record says it did not start."""
    if not HydraConfig.initialized() or not _multirun(HydraConfig.get()):
        return False
    _job.not_started = (Path(HydraConfig.get().sweep.dir) / STOP_MARKER).exists()
    return _job.not_started


def _stop_sweep(sweep_dir: Path) -> None:
    """Jobs that begin from now on do no work (they may run in other processes)."""
    _job.presses += 1
    if _job.presses >= 3:  # waiting for the jobs' records takes too long for the user
        raise KeyboardInterrupt
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / STOP_MARKER).touch()
    except OSError:
        pass


def _interrupt_job(signum: int, frame: Any) -> None:
    """Ctrl-C during a job: stop it (Lightning saves nothing more and exits), noting that it
    was asked for; in a sweep, the jobs not begun yet are not started. In a fit the job stops
    at its next chunk of steps (:func:`stop_at_safe_points`), elsewhere at once; a later press
    while the job is stopping is ignored (Lightning restores this handler as it tears down),
    unless the fit has not reached its next chunk yet."""
    _job.presses += 1
    if _job.presses > 1:
        if _job.safe_points:  # still waiting for the fit: stop it now
            _job.safe_points = False
            raise KeyboardInterrupt
        return
    _job.interrupted = True
    for name in ("pytorch", "fabric"):  # Lightning's "Detected KeyboardInterrupt, ..."
        logging.getLogger(f"lightning.{name}.utilities.rank_zero").addFilter(_not_detected)
    if HydraConfig.initialized() and _multirun(HydraConfig.get()):
        (Path(HydraConfig.get().sweep.dir) / STOP_MARKER).touch()
    if not _job.safe_points:
        raise KeyboardInterrupt


def _not_detected(record: logging.LogRecord) -> bool:
    return "Detected KeyboardInterrupt" not in record.getMessage()


def _after_job(signum: int, frame: Any) -> None:
    """Ctrl-C while a job's record is written: the job is done; a sweep stops after it."""
    if HydraConfig.initialized() and _multirun(HydraConfig.get()):
        (Path(HydraConfig.get().sweep.dir) / STOP_MARKER).touch()


def _set_sigint(handler: Any) -> Any:
    """Install ``handler``; the previous one, or None where signals cannot be set (a thread)."""
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None


def command_again(**values: str) -> str:
    """This process's command line with ``values`` set (replacing the same keys)."""
    program = Path(sys.argv[0]).name
    if program in ("train.py", "__main__.py", "-c", ""):
        program = "python -m mtrec.train"
    keys = {key.lstrip("+~") for key in values}
    args = [a for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") not in keys]
    args += [f"{key}={value}" for key, value in values.items()]
    return " ".join([program, *(shlex.quote(a) for a in args)])


def _shown_path(path: str | Path) -> str:
    """``path`` relative to the current folder where it lies below it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _epochs_done(folder: Path, config: DictConfig) -> str:
    """How far an interrupted job got, e.g. ``after 12 of 200 epochs``."""
    epochs = [e.get("epoch", 0) for e in read_metrics(folder).get("history", [])]
    total = OmegaConf.select(config, "trainer.max_epochs", default=None)
    return f"after {max(epochs, default=0)}" + (f" of {total}" if total else "") + " epochs"


def _interruption(folder: Path, config: DictConfig) -> str:
    """What an interrupted job's record says: how far it got, and what running it again does."""
    if last_checkpoint(folder).is_file():
        done = _epochs_done(folder, config)
        return f"interrupted {done}; continues from {LAST_CHECKPOINT} when run again"
    return "interrupted before its first checkpoint; starts afresh when run again"


class SweepRecorder(Callback):
    """Writes ``job.json`` (status, error, wall time) in each job folder; in a sweep, then the
    summary. A single run touches its own folder only.

    The summary is rewritten after every job, so a sweep whose job fails, or that is stopped,
    still has an up-to-date ``summary.csv``; Hydra skips ``on_multirun_end`` when a job failed.
    A job that does no work (completed before with the same config, or refused because its
    folder holds a run with another config: see :mod:`mtrec.runs.rerun`) keeps its record;
    a job that continues an earlier one adds the earlier wall time.

    Ctrl-C stops the jobs running (each records ``interrupted``), and the jobs not begun yet do
    no work; the run or sweep then ends with one line that says how to continue it (the same
    command: see :mod:`mtrec.runs.rerun`) and exit status 130. Jobs side by side stop on the
    signal the terminal sends them; the launching process only waits for their records.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.rerun: Rerun | None = None
        self.launcher_pid: int | None = None  # the sweep's launching process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.launcher_pid = os.getpid()
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / STOP_MARKER).unlink(missing_ok=True)  # left by an earlier interruption
        _handlers["sweep"] = _set_sigint(lambda signum, frame: _stop_sweep(sweep_dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        self.rerun = plan_rerun(HydraConfig.get().runtime.output_dir, config)
        _job.interrupted, _job.not_started, _job.presses, _job.safe_points = False, False, 0, False
        _handlers["job"] = _set_sigint(_interrupt_job)
        if parallel_jobs():
            _log_through_job()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        _set_sigint(_after_job)
        hydra_cfg = HydraConfig.get()
        folder = Path(hydra_cfg.runtime.output_dir)
        error, damaged = "", False
        if _job.not_started:
            error = NOT_STARTED
        elif _job.interrupted:
            error = _interruption(folder, config)
        elif job_return.status == JobStatus.FAILED:
            try:
                _ = job_return.return_value  # re-raises the job's exception
            except Exception as failure:  # any failure becomes the row's message
                error = f"{type(failure).__name__}: {failure}"
                damaged = isinstance(failure, DamagedCheckpoint)
            log.error("Job failed: %s", error)
        action = self.rerun.action if self.rerun is not None else None
        earlier = self.rerun.record if self.rerun is not None else {}
        # no work done: refused, its checkpoint found damaged, or stopped before it began
        keep = action in (SKIP, REFUSE) or (action == CONTINUE and damaged)
        keep = keep or (_job.not_started and earlier)
        if not keep:  # otherwise the folder's record stays as it was
            seconds = time.time() - self.started if self.started else None
            if seconds is not None and action == CONTINUE:
                seconds += self.rerun.earlier_seconds
            stopped = _job.interrupted or _job.not_started
            record = {
                "status": INTERRUPTED if stopped else "failed" if error else "completed",
                "error": error,
                "wall_seconds": round(seconds, 2) if seconds is not None else None,
                "overrides": list(hydra_cfg.overrides.task),
            }
            write_job(folder, record)
        if _multirun(hydra_cfg):  # a stopped sweep's jobs leave the one line to the launcher
            self._summarise(Path(hydra_cfg.sweep.dir), quiet=_job.interrupted or _job.not_started)
        in_worker = self.launcher_pid is not None and os.getpid() != self.launcher_pid
        # a worker process of jobs side by side ignores Ctrl-C between jobs: the launching
        # process stops the sweep
        _set_sigint(signal.SIG_IGN if in_worker else _handlers.get("job") or signal.SIG_DFL)
        if _job.interrupted and not _multirun(hydra_cfg):
            if last_checkpoint(folder).is_file():
                how = f"To continue it from its last checkpoint: {command_again(ckpt_path='last')}"
                done = _epochs_done(folder, config)
            else:
                how, done = f"To start it again: {command_again()}", "before its first checkpoint"
            log.warning("Interrupted %s %s. %s", _shown_path(folder), done, how)
            raise SystemExit(130)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "sweep" in _handlers:
            _set_sigint(_handlers.pop("sweep") or signal.SIG_DFL)
        sweep_dir = Path(config.hydra.sweep.dir)
        marker = sweep_dir / STOP_MARKER
        if not marker.exists():
            self._summarise(sweep_dir)
            return
        self._summarise(sweep_dir, quiet=True)
        marker.unlink(missing_ok=True)
        statuses = [(read_job(folder), folder.name) for folder in job_folders(sweep_dir)]
        stopped = [name for record, name in statuses if record.get("status") == INTERRUPTED]
        not_started = [n for r, n in statuses if r.get("error") == NOT_STARTED and n in stopped]
        completed = sum(record.get("status") == "completed" for record, _ in statuses)
        running = [name for name in stopped if name not in not_started]
        log.warning(
            "Interrupted the sweep %s: %s stopped%s, %d not started, %d completed "
            "(summary.md there). To continue them, each from its last checkpoint: %s",
            _shown_path(sweep_dir),
            "1 job" if len(running) == 1 else f"{len(running)} jobs",
            f" ({', '.join(running)})" if running else "",
            len(not_started),
            completed,
            command_again(**{"hydra.sweep.dir": _shown_path(sweep_dir)}),
        )
        raise SystemExit(130)

    @staticmethod
    def _summarise(sweep_dir: Path, quiet: bool = False) -> None:
        """One job at a time (parallel jobs): each reads every job's record, so the last one
        to write has seen them all."""
        try:
            with FileLock(str(sweep_dir / ".summary.lock")):
                write_report(sweep_dir)
            if not quiet:
                log.info("Sweep summary: %s", sweep_dir / "summary.md")
        except Exception:  # the summary must never fail the sweep itself
            log.exception("Could not write the sweep summary of %s", sweep_dir)
