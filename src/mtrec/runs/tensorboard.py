"""TensorBoard extras: a real HParams session per run (its hyperparameters to every tracker),
and item embeddings for the projector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import ListConfig
from tensorboard.plugins.hparams.metadata import EXPERIMENT_TAG
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from mtrec.mtl.tasks import metric_names


def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _hparam_value(value):
    """Numbers stay numbers; every categorical value (booleans too) becomes a string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, list | tuple | ListConfig):  # e.g. the tasks: "interaction,rating"
        return ",".join(str(v) for v in value)
    return str(value)


def mark_differing(summary, keys: Sequence[str]):
    """Flags ``keys`` as the hyperparameters that differ between runs in an experiment summary.

    TensorBoard's HParams dashboard shows five hyperparameter columns at first: the backend
    orders the experiment's ``hparam_infos`` by (``differs`` first, then name) and the dashboard
    ticks the first five after a stable sort on ``differs``. The summaries written by
    ``torch.utils.tensorboard`` leave ``differs`` unset, so the columns shown would be the first
    five names in alphabetical order; flagged, the swept keys come first.
    """
    for value in summary.value:
        if value.tag != EXPERIMENT_TAG:
            continue
        content = HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in content.experiment.hparam_infos:
            info.differs = info.name in keys
        value.metadata.plugin_data.content = content.SerializeToString()
    return summary


class HParamsSession(L.Callback):
    """Writes one HParams session for the run, with the metrics its tasks report, and gives
    every other tracker (MLflow, W&B, CSV) the same hyperparameters.

    TensorBoard's dashboard reads each metric's value from the run's own scalar of that name
    (its last step), so the table shows the final ``test/...`` (and ``val/...``) values, never a
    placeholder. ``hparams`` is a fixed set from the config, and each trained task's fixed weight
    (``weighting.weights.<task>``, none for other strategies); ``swept`` holds the values the run's
    sweep varies, so all runs of a sweep share one set of keys. The swept keys are flagged as
    the ones that differ, so they are among the columns the dashboard shows at first.
    """

    def __init__(self, hparams: Mapping, swept: Mapping | None = None):
        self.hparams = {**dict(hparams), **dict(swept or {})}
        self.swept = list(swept or {})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.ckpt_path:
            return  # a resumed run continues the session its first start wrote
        values = {key: _hparam_value(value) for key, value in self.hparams.items()}
        weights = pl_module.weighting.effective_weights()  # each trained task's, if constant
        for task in pl_module.tasks:
            values[f"weighting.weights.{task.name}"] = _hparam_value(weights.get(task.name))
        for other in trainer.loggers:  # MLflow, W&B, CSV: the same key set as parameters
            if not isinstance(other, TensorBoardLogger):
                other.log_hyperparams(values)
        logger = _tensorboard(trainer)
        if logger is None:
            return
        prefixes = ["test"] + (
            ["val"] if getattr(trainer.datamodule, "has_validation", False) else []
        )
        names = metric_names(pl_module.tasks, pl_module.hparams.get("top_k", 10))
        metrics = {f"{prefix}/{name}": 0.0 for prefix in prefixes for name in names}
        logger.hparams.update(values)  # the run folder's hparams.yaml holds them too
        writer = logger.experiment.file_writer
        for summary in hparams_summaries(values, metrics):
            writer.add_summary(mark_differing(summary, self.swept))
        writer.flush()


class ItemEmbeddingProjector(L.Callback):
    """Logs every item embedding table of the final model to TensorBoard's projector.

    Items are labelled with their title and genres. With separate embeddings both tables are
    logged, each under its module name.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger, datamodule = _tensorboard(trainer), trainer.datamodule
        if logger is None or not trainer.is_global_zero or datamodule is None:
            return
        metadata = datamodule.item_metadata.set_index("item")
        raw_ids = datamodule.vocabulary.item_ids
        labels = [
            [str(metadata.title.get(i, f"item {i}")), "|".join(metadata.genres.get(i, ()))]
            for i in raw_ids
        ]
        for name, module in pl_module.named_modules():
            if isinstance(module, torch.nn.Embedding) and module.num_embeddings == len(raw_ids):
                if module.embedding_dim < 2:
                    continue  # biases: nothing to project
                logger.experiment.add_embedding(
                    module.weight.detach().cpu(),
                    metadata=labels,
                    metadata_header=["title", "genres"],
                    tag=name.removeprefix("net."),
                    global_step=trainer.global_step,
                )
