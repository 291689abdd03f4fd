"""A Hydra callback that records every job's outcome and keeps the sweep summary current."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtrec.runs.folder import write_job
from mtrec.runs.report import write_report
from mtrec.runs.rerun import CONTINUE, REFUSE, SKIP, Rerun, plan_rerun

log = logging.getLogger(__name__)


def _multirun(hydra_cfg: DictConfig) -> bool:
    return hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"


class SweepRecorder(Callback):
    """Writes ``job.json`` (status, error, wall time) in each job folder; in a sweep, then the
    summary. A single run touches its own folder only.

    The summary is rewritten after every job, so a sweep whose job fails, or that is stopped,
    still has an up-to-date ``summary.csv``; Hydra skips ``on_multirun_end`` when a job failed.
    A job that does no work (completed before with the same config, or refused because its
    folder holds a run with another config: see :mod:`mtrec.runs.rerun`) keeps its record;
    a job that continues an earlier one adds the earlier wall time.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.rerun: Rerun | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        self.rerun = plan_rerun(HydraConfig.get().runtime.output_dir, config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        error = ""
        if job_return.status == JobStatus.FAILED:
            try:
                _ = job_return.return_value  # re-raises the job's exception
            except Exception as failure:  # any failure becomes the row's message
                error = f"{type(failure).__name__}: {failure}"
            log.error("Job failed: %s", error)
        action = self.rerun.action if self.rerun is not None else None
        if action not in (SKIP, REFUSE):  # the folder's record stays as it was
            seconds = time.time() - self.started if self.started else None
            if seconds is not None and action == CONTINUE:
                seconds += self.rerun.earlier_seconds
            record = {
                "status": "failed" if error else "completed",
                "error": error,
                "wall_seconds": round(seconds, 2) if seconds is not None else None,
                "overrides": list(hydra_cfg.overrides.task),
            }
            write_job(hydra_cfg.runtime.output_dir, record)
        if _multirun(hydra_cfg):
            self._summarise(Path(hydra_cfg.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarise(Path(config.hydra.sweep.dir))

    @staticmethod
    def _summarise(sweep_dir: Path) -> None:
        """One job at a time (parallel jobs): each reads every job's record, so the last one
        to write has seen them all."""
        try:
            with FileLock(str(sweep_dir / ".summary.lock")):
                write_report(sweep_dir)
            log.info("Sweep summary: %s", sweep_dir / "summary.md")
        except Exception:  # the summary must never fail the sweep itself
            log.exception("Could not write the sweep summary of %s", sweep_dir)
