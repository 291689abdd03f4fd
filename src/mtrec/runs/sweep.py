"""A Hydra callback that records every job's outcome and keeps the sweep summary current."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtrec.files import atomic_write_text
from mtrec.runs.report import write_report

log = logging.getLogger(__name__)


def completed_metrics(output_dir: str | Path) -> dict[str, float] | None:
    """The final metrics of a job folder whose ``job.json`` says it completed, else ``None``.

    Re-running an interrupted sweep into its folder skips these jobs.
    """
    job, metrics = Path(output_dir) / "job.json", Path(output_dir) / "metrics.json"
    if not (job.exists() and metrics.exists()):
        return None
    if json.loads(job.read_text()).get("status") != "completed":
        return None
    return json.loads(metrics.read_text())["final"]


class SweepRecorder(Callback):
    """Writes ``job.json`` (status, error, wall time) in each job folder, then the summary.

    The summary is rewritten after every job, so a sweep whose job fails, or that is stopped,
    still has an up-to-date ``summary.csv``; Hydra skips ``on_multirun_end`` when a job failed.
    A job that had completed before (a re-run sweep) keeps its record.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.completed_before = False

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        self.completed_before = completed_metrics(HydraConfig.get().runtime.output_dir) is not None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        if self.completed_before and job_return.status == JobStatus.COMPLETED:
            self._summarise(Path(hydra_cfg.sweep.dir))
            return
        error = ""
        if job_return.status == JobStatus.FAILED:
            try:
                _ = job_return.return_value  # re-raises the job's exception
            except Exception as failure:  # any failure becomes the row's message
                error = f"{type(failure).__name__}: {failure}"
            log.error("Job failed: %s", error)
        record = {
            "status": "failed" if error else "completed",
            "error": error,
            "wall_seconds": round(time.time() - self.started, 2) if self.started else None,
            "overrides": list(hydra_cfg.overrides.task),
        }
        output_dir = Path(hydra_cfg.runtime.output_dir)
        atomic_write_text(output_dir / "job.json", json.dumps(record, indent=2))
        if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
            self._summarise(Path(hydra_cfg.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarise(Path(config.hydra.sweep.dir))

    @staticmethod
    def _summarise(sweep_dir: Path) -> None:
        try:
            write_report(sweep_dir)
            log.info("Sweep summary: %s", sweep_dir / "summary.md")
        except Exception:  # the summary must never fail the sweep itself
            log.exception("Could not write the sweep summary of %s", sweep_dir)
