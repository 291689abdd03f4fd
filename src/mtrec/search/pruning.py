"""Pruning a trial from inside its run: each validation epoch's metric goes to the trial's
study, and the run stops once the study's pruner finds the trial unpromising."""

from __future__ import annotations

import logging

import lightning as L
import optuna

from mtrec.errors import ConfigError

log = logging.getLogger(__name__)


def open_trial(
    storage: str, study_name: str, number: int, pruner: optuna.pruners.BasePruner | None
) -> optuna.Trial:
    """Trial ``number`` of the study in ``storage``, as its own process sees it: the search
    asked for it, the run reports to it."""
    rdb = optuna.storages.RDBStorage(storage)
    study = optuna.load_study(study_name=study_name, storage=rdb, pruner=pruner)
    study_id = rdb.get_study_id_from_name(study_name)
    return optuna.Trial(study, rdb.get_trial_id_from_study_id_trial_number(study_id, number))


class TrialPruning(L.Callback):
    """Reports ``monitor`` after every validation epoch (step = epochs done) and, when the
    pruner says so, ends the trial as pruned and stops training after that epoch.

    A pruned run ends as usual (its held-out metrics, checkpoint and ``job.json``), so its
    folder holds what it trained. Outside a search (``trial`` unset) it does nothing.
    """

    def __init__(
        self,
        monitor: str,
        trial: int | None = None,
        study: str | None = None,
        storage: str | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
    ):
        self.monitor = monitor
        self.number = trial
        self.study, self.storage, self.pruner = study, storage, pruner
        self.trial: optuna.Trial | None = None
        self.pruned_at: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.number is None or stage != "fit" or self.trial is not None:
            return
        if not (self.study and self.storage):
            raise ConfigError(
                f"search.trial={self.number} needs search.study and search.storage (the "
                "search sets all three): run the search with hparams_search=optuna."
            )
        self.trial = open_trial(self.storage, self.study, self.number, self.pruner)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None or trainer.sanity_checking or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            mains = " or ".join(f"val/{task.main_metric}" for task in pl_module.tasks)
            raise ConfigError(
                f"optimized_metric={self.monitor} is not a validation metric of this run: "
                f"use one its validation epoch logs, e.g. {mains} "
                "(with data.val_fraction > 0)."
            )
        epochs = trainer.current_epoch + 1
        self.trial.report(float(value), step=epochs)
        if self.trial.should_prune():
            self.pruned_at = epochs
            self.trial.study.tell(self.number, state=optuna.trial.TrialState.PRUNED)
            trainer.should_stop = True
            log.info(
                "Trial %d pruned after epoch %d of %d: %s=%.4f is not promising beside the "
                "study's earlier trials at that epoch.",
                self.number,
                epochs,
                trainer.max_epochs,
                self.monitor,
                float(value),
            )
