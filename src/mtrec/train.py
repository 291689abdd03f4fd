"""The Hydra entry point: build every part from its config, fit, test, return the metrics."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from mtrec.errors import ConfigError, UserError, instantiate_as_raised
from mtrec.memory import keep_freed_memory
from mtrec.reference_keys import apply_reference_keys
from mtrec.runs.folder import completed_metrics, last_checkpoint, read_checkpoint
from mtrec.runs.naming import register_resolvers
from mtrec.runs.rerun import SKIP, afresh, check_rerun
from mtrec.runs.sweep import job_interrupted, sweep_stopped
from mtrec.runs.trackers import finish_runs
from mtrec.validation import validate

log = logging.getLogger(__name__)
register_resolvers()


def register_sweepers() -> None:
    """``hydra/sweeper=twins`` and ``hydra/sweeper=optuna``. Hydra finds sweepers by scanning
    ``hydra_plugins``, which misses an editable install's modules, and re-executes the modules
    it scans (the basic sweeper's too): so import them after the scan, then register them."""
    plugins = Plugins.instance()
    from hydra_plugins.mtrec_optuna_sweeper.optuna_sweeper import OptunaSweeper
    from hydra_plugins.mtrec_twins_sweeper.twins_sweeper import TwinsSweeper

    plugins.register(TwinsSweeper)
    plugins.register(OptunaSweeper)


register_sweepers()


def build(
    cfg: DictConfig, *, validated: bool = False
) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The data module (set up) and the LightningModule that ``cfg`` describes.

    The net gets a :class:`~mtrec.data.info.DataInfo` (counts, item genres, training rows)
    as its first argument.

    The reference's keys (:mod:`mtrec.reference_keys`) are applied here first, for callers
    that build from a config of their own (``mtrec-eval``, ``mtrec-explore``). ``validated``:
    ``cfg`` went through :func:`~mtrec.validation.validate`, which applied them already
    (:func:`train` passes it), so they are applied once per run.
    """
    if not validated:
        apply_reference_keys(cfg)
    torch.set_num_threads(cfg.threads)
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    torch.compiler.reset()  # each run compiles afresh: runs of one process never share graphs
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model.net, _partial_=True)(datamodule.data_info())  # data as it is
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = instantiate(
        cfg.model.module,
        net=net,
        weighting=instantiate(cfg.weighting),
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
    )
    return datamodule, module


def train(
    cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = (), *, validated: bool = False
) -> dict[str, float]:
    """Train one run described by ``cfg``; return its final held-out metrics.

    Each run is validated once (:func:`~mtrec.validation.validate`, which also applies the
    reference's keys): here, unless ``validated`` says the caller did it already. A caller
    with a config of its own (tests, benchmarks) leaves it False; :func:`main` validates
    before the run folder records the config (:meth:`~mtrec.runs.rerun.Rerun.begin`), so that
    a mistake leaves the folder as it was, and passes True.
    """
    if not validated:
        validate(cfg)
    log.info("Config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    checkpoint = resume_from(cfg)
    # first: a tracker's store that cannot be used stops the run before any work
    loggers = [tracker(c, checkpoint) for c in (cfg.get("logger") or {}).values()]
    datamodule, module = build(cfg, validated=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks += extra_callbacks
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    try:
        metrics = fit_and_test(trainer, module, datamodule, checkpoint)
    except BaseException:
        finish_runs(loggers, failed=True)
        raise
    finish_runs(loggers, failed=False)
    log.info(
        "Final metrics: %s",
        {name: round(value, 4) for name, value in metrics.items() if "/gate/" not in name},
    )
    return metrics


def fit_and_test(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    checkpoint: str | None,
) -> dict[str, float]:
    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    metrics = held_out_metrics(trainer)
    if datamodule.has_validation:  # the test rows are read once, after all choices are made
        selected = selected_checkpoint(trainer)
        if selected:  # report (and return to a search) the selected epoch's validation metrics
            trainer.validate(module, datamodule=datamodule, ckpt_path=selected)
            metrics = held_out_metrics(trainer)
        trainer.test(module, datamodule=datamodule, ckpt_path=selected)
        metrics.update(held_out_metrics(trainer))
    return metrics


def tracker(config: DictConfig, checkpoint: str | None) -> Logger:
    """The logger ``config`` describes (a bad tracker store: its own message)."""
    return instantiate_as_raised(config, **resumed_logging(config, checkpoint))


def resumed_logging(logger: DictConfig, checkpoint: str | None) -> dict:
    """For TensorBoard, on resuming: hide the events a killed run wrote after its checkpoint
    (``purge_step``), so the epochs it redoes are not shown twice."""
    if checkpoint is None or not logger.get("_target_", "").endswith("TensorBoardLogger"):
        return {}
    saved = read_checkpoint(checkpoint, fix=afresh())
    return {"purge_step": saved["global_step"] + 1}  # the checkpoint's own epoch stays


def selected_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint of a checkpoint callback that monitors a validation metric
    (``callbacks=selection``), or None: the final weights."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_path:
            log.info(
                "Testing the checkpoint with the best %s (%.4f): %s",
                callback.monitor,
                float(callback.best_model_score),
                callback.best_model_path,
            )
            return callback.best_model_path
    return None


def resume_from(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from: ``ckpt_path`` (``last``: the run folder's own), or
    without it the run folder's last checkpoint if there is one (a re-run sweep's job that
    was stopped part-way)."""
    checkpoint = cfg.get("ckpt_path")
    last = last_checkpoint(cfg.paths.output_dir)
    if checkpoint == "last" or (checkpoint is None and last.exists()):
        checkpoint = str(last)
        log.info("Continuing from %s", last)
    if cfg.get("ckpt_path") == "last" and not last.exists():
        raise ConfigError(
            f"ckpt_path=last: no earlier run in {last.parents[2]} left checkpoints/last.ckpt. "
            "Fix: give the same name and overrides as the run to continue, or "
            "ckpt_path=<path to a .ckpt file>, or leave ckpt_path out to start afresh."
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path}: {checkpoint} is not a file. Fix: give the path of a "
            "checkpoint (<run folder>/checkpoints/last.ckpt), or leave ckpt_path out."
        )
    if checkpoint is not None:  # before any work: a damaged file stops the run, untouched
        read_checkpoint(checkpoint, fix=afresh())
    return checkpoint


def held_out_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in trainer.callback_metrics.items()
        if name.startswith(("val/", "test/"))
    }


@hydra.main(version_base="1.3", config_path="pkg://mtrec.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` (e.g. ``val/mrr``) when set: the objective of a search.

    A :class:`~mtrec.errors.UserError` (a bad config value or data file) ends a single run
    with its message alone and exit status 2; in a sweep it fails that job, which the sweep
    summary records, and the other jobs go on.

    Into a folder that already holds a run (``hydra.run.dir``, ``ckpt_path=last``, a re-run
    sweep), the same config skips a completed run, a longer one continues it from its last
    checkpoint, and any other is refused before any work (:mod:`mtrec.runs.rerun`).

    Ctrl-C stops the job (a fit after its chunk of steps under way); its ``job.json`` says
    ``interrupted`` and the run or sweep ends with one line saying how to continue it
    (:class:`~mtrec.runs.sweep.SweepRecorder`). A job of an interrupted sweep that had not
    begun does no work.
    """
    objective = cfg.get("optimized_metric")
    try:
        rerun = check_rerun(cfg.paths.output_dir, cfg)
        if rerun.action == SKIP:
            log.info("%s completed before with this config: skipped", cfg.paths.output_dir)
            metrics = completed_metrics(cfg.paths.output_dir) or {}
            return metrics.get(objective) if objective else None
        if sweep_stopped():
            return math.nan if objective else None
        validate(cfg)  # before the folder records this config: a mistake leaves it as it was
        rerun.begin()
        metrics = train(cfg, validated=True)
    except UserError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        log.error("%s", error)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, SystemExit):  # Lightning ends an interrupted fit with exit(1)
        if not job_interrupted():
            raise
        return math.nan if objective else None  # a search counts the trial as failed
    return metrics.get(objective) if objective else None


if __name__ == "__main__":
    main()
