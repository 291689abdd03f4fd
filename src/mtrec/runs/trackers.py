"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases, each optional.

Every tracker gets what TensorBoard gets (the HParams key set through
:class:`~mtrec.runs.tensorboard.HParamsSession`, every logged metric, the run's name as its
sweep names it): Lightning's loggers do the logging. This module holds what they leave out: one
clear message when a chosen tracker is not installed, a local MLflow store that two jobs of a
sweep can open at once, and the end of each W&B run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

from filelock import FileLock
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger

from mtrec.errors import ConfigError

# The package each optional tracker's logger needs, by the end of its config's _target_.
PACKAGES = {"MLFlowLogger": "mlflow", "mlflow_logger": "mlflow", "WandbLogger": "wandb"}
INSTALL = "pip install 'mtrec[trackers]' (in a checkout: pip install -e '.[trackers]')"
SQLITE = "sqlite:///"


def check_trackers(targets: Mapping[str, str]) -> None:
    """One clear error, before any work, for a chosen tracker (its name: its config's
    ``_target_``) whose package is missing."""
    for name, target in targets.items():
        package = PACKAGES.get(target.rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger={name} needs the {package} package, which is not installed. "
                f"Fix: {INSTALL}, or choose another logger (logger=tensorboard, logger=csv)."
            )


def mlflow_logger(
    experiment_name: str,
    run_name: str,
    tracking_uri: str,
    tags: Mapping[str, str] | None = None,
    log_model: bool = False,
) -> MLFlowLogger:
    """Lightning's MLflow logger, its experiment made ready first.

    On a local SQLite store (``sqlite:///<path>``, the default under ``outputs/``) the store
    and the experiment are created under a file lock, since the jobs of a sweep start side by
    side and MLflow creates neither atomically; the experiment's artifacts go beside the store
    (``<store folder>/mlflow-artifacts/<experiment>``) rather than into the current folder. A
    store written by another MLflow version is refused, with the command that upgrades it.
    """
    artifacts = None
    if tracking_uri.startswith(SQLITE):
        store = Path(tracking_uri.removeprefix(SQLITE))
        store.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (store.parent / "mlflow-artifacts" / experiment_name).resolve().as_uri()
        with FileLock(f"{store}.lock"):
            _create_experiment(tracking_uri, experiment_name, artifacts)
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=dict(tags or {}),
        log_model=log_model,
        artifact_location=artifacts,
    )


def _create_experiment(tracking_uri: str, name: str, artifacts: str) -> None:
    """The store's tables and the experiment, where missing; a stale store refused."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=artifacts)
    except MlflowException as error:
        if "out-of-date database schema" not in str(error):
            raise
        raise ConfigError(
            f"logger.mlflow.tracking_uri={tracking_uri}: the store was written by another "
            f"MLflow version. Fix: back it up, then run `mlflow db upgrade {tracking_uri}`, or "
            "give another store (logger.mlflow.tracking_uri=sqlite:///<new file>)."
        ) from None


def finish_runs(loggers: Iterable[Logger], failed: bool) -> None:
    """End each W&B run with the run's outcome. Lightning's W&B logger leaves its run open
    until the process exits, so the next job of a sweep in the same worker would end it as a
    success, and a failed run would look like one."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:  # None when the run failed before it began
        wandb.run.finish(exit_code=1 if failed else 0)
