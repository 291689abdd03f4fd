"""The study's bookkeeping around the trials: trials a stopped search left running, and the
best trial written to the sweep folder."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from mtrec.files import atomic_write_text

log = logging.getLogger(__name__)
RESULTS = "optimization_results.yaml"


def leftover_trials(study: optuna.Study) -> None:
    """Marks failed the trials an earlier, stopped search left running, so that they neither
    count as done nor sit as running in the dashboard (one search per study at a time)."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.info("Trial %d was left running by an earlier search: marked failed", trial.number)


def trial_folder(sweep_dir: Path, number: int) -> str | None:
    """The job folder of trial ``number`` in this sweep (None: a trial of an earlier one)."""
    for overrides in sweep_dir.glob("*/.hydra/overrides.yaml"):
        if f"search.trial={number}" in OmegaConf.load(overrides):
            return overrides.parents[1].name
    return None


def record_best(study: optuna.Study, sweep_dir: Path, storage: str) -> Path | None:
    """``<sweep>/optimization_results.yaml``: the best trial's settings and value, the trials
    by state, the epochs trained in all; logged too. None when no trial completed."""
    states = [t.state for t in study.trials]
    counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if s in states}
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.warning("No trial completed (%s): no best trial to write", counts)
        return None
    best = study.best_trial
    results = {
        "name": study.study_name,
        "metric": (study.metric_names or ["value"])[0],
        "direction": study.direction.name.lower(),
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "best_run": trial_folder(sweep_dir, best.number),
        "trials": counts,
        "epochs_trained": epochs,
        "storage": storage,
        "dashboard": f"optuna-dashboard {storage}",
    }
    path = sweep_dir / RESULTS
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(results)))
    log.info(
        "Best of %d trials (%s): trial %d, %s=%.4f, %s. Written to %s; see the study with: %s",
        len(states),
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        best.number,
        results["metric"],
        best.value,
        best.params,
        path,
        results["dashboard"],
    )
    return path
