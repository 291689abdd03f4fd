"""Running again where a run already is: skip, continue to a new length, or refuse.

A launch into a folder that holds a run (``hydra.run.dir``, ``ckpt_path=last``, a re-run
sweep) compares its config with the one the folder's checkpoint and metrics were computed with
(:func:`mtrec.runs.folder.save_config_copy`), before any work.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtrec.errors import ConfigError
from mtrec.runs.folder import (
    CONFIG,
    LAST_CHECKPOINT,
    DamagedCheckpoint,
    completed_metrics,
    config_dir,
    last_checkpoint,
    read_checkpoint,
    read_job,
    restore_config_files,
    save_config_copy,
    write_job,
)

log = logging.getLogger(__name__)

# Keys that do not change what a run computes, so a run with other values of them counts as
# the same run: where things are read and written (paths, hydra, ckpt_path, name, the data
# cache), what a search reads (optimized_metric), speed settings that leave the arithmetic
# as it is (threads, keep_freed_memory, model.compile), and what is shown or logged (the
# logger, the progress bar, HParams and projector callbacks, model summary, logging interval).
# A key counts with everything below it (``paths`` covers ``paths.output_dir``).
HOUSEKEEPING_KEYS = (
    "paths",
    "hydra",
    "ckpt_path",
    "name",
    "optimized_metric",
    "data.cache_dir",
    "threads",
    "keep_freed_memory",
    "model.compile",
    "logger",
    "callbacks.progress_bar",
    "callbacks.hparams",
    "callbacks.item_embeddings",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
# Keys that only say how long to train: a larger value continues a run from its checkpoint.
LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps")
NOT_SET = "(not set)"


class ConfigChanged(ConfigError):
    """A run folder already holds a run made with another config."""


NEW, CONTINUE, SKIP, REFUSE = "new", "continue", "skip", "refuse"


@dataclass(frozen=True)
class Rerun:
    """What a launch into ``folder`` does: ``new`` (nothing to keep there: train afresh),
    ``continue`` (train on from ``checkpoints/last.ckpt``), ``skip`` (completed with this
    config) or ``refuse`` (another config: ``message`` says which keys and the fix)."""

    folder: Path
    action: str
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key: (saved, now)
    record: dict = field(default_factory=dict)  # job.json as it was before this launch
    message: str = ""
    config: DictConfig | None = field(default=None, repr=False)  # this launch's

    @property
    def earlier_seconds(self) -> float:
        """Wall time of the earlier launches whose work this one continues (0 when new)."""
        seconds = self.record.get("wall_seconds") if self.action == CONTINUE else None
        return float(seconds) if isinstance(seconds, int | float) else 0.0

    def begin(self) -> None:
        """Record that this launch's work begins: its config becomes the folder's saved one,
        and a completed run that is continued is marked unfinished until it completes again."""
        if self.action == CONTINUE and self.record.get("status") == "completed":
            write_job(self.folder, {**self.record, "status": "unfinished"})
        save_config_copy(self.folder, self.config)


def plan_rerun(folder: str | Path, cfg: DictConfig) -> Rerun:
    """What a launch with ``cfg`` into ``folder`` does (see :class:`Rerun`); changes nothing.

    A folder without a checkpoint or a completed run has nothing to keep: ``new``. Otherwise
    ``cfg`` is compared with the folder's saved run config, leaving out
    :data:`HOUSEKEEPING_KEYS`: the same config skips a completed run and continues an
    unfinished one; a larger ``trainer.max_epochs`` or ``trainer.max_steps`` with all else
    equal continues either from ``checkpoints/last.ckpt``; anything else is refused. A folder
    written before configs were saved there is skipped when completed, else continued.
    """
    folder = Path(folder)
    record = read_job(folder)
    completed = completed_metrics(folder) is not None
    checkpoint = last_checkpoint(folder).is_file()
    if not (completed or checkpoint):
        return Rerun(folder, NEW, record=record, config=cfg)
    saved = _saved_config(folder)
    if saved is None:
        return Rerun(folder, SKIP if completed else CONTINUE, record=record, config=cfg)
    changes = config_changes(saved, cfg)
    if not changes:
        return Rerun(folder, SKIP if completed else CONTINUE, changes, record, config=cfg)
    if _only_longer(changes) and checkpoint:
        return Rerun(folder, CONTINUE, changes, record, config=cfg)
    message = _refusal(folder, changes, completed, checkpoint)
    return Rerun(folder, REFUSE, changes, record, message, cfg)


def check_rerun(folder: str | Path, cfg: DictConfig) -> Rerun:
    """:func:`plan_rerun`, acted on before any work: a launch that does no work (skipped,
    refused, or a continuation whose checkpoint is damaged) puts Hydra's ``.hydra`` files back
    as they were; a refusal raises :class:`ConfigChanged` with its message, a damaged
    checkpoint :class:`~mtrec.runs.folder.DamagedCheckpoint`. Call :meth:`Rerun.begin` once
    work starts."""
    rerun = plan_rerun(folder, cfg)
    if rerun.action in (SKIP, REFUSE):
        restore_config_files(folder)
    if rerun.action == REFUSE:
        raise ConfigChanged(rerun.message)
    if rerun.action == CONTINUE and last_checkpoint(folder).is_file():
        try:
            read_checkpoint(last_checkpoint(folder), fix=afresh())
        except DamagedCheckpoint:
            restore_config_files(folder)
            raise
    if rerun.action == CONTINUE and rerun.changes:
        log.info("Continuing %s to the new length: %s", folder, _listing(rerun.changes))
    return rerun


def _saved_config(folder: Path) -> DictConfig | None:
    path = config_dir(folder, saved=True) / CONFIG
    try:
        return OmegaConf.load(path) if path.exists() else None
    except Exception:  # an unreadable copy cannot be compared: as if there were none
        log.warning("Could not read %s; not comparing configs", path)
        return None


def is_housekeeping(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in HOUSEKEEPING_KEYS)


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as ``{dotted key: value}``, interpolations unresolved, lists as values."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return flat


def config_changes(saved: DictConfig, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """The keys whose values differ, housekeeping left out: ``{key: (saved, now)}``, with
    :data:`NOT_SET` for a key one of the two lacks."""
    old, new = flat_config(saved), flat_config(cfg)
    return {
        key: (old.get(key, NOT_SET), new.get(key, NOT_SET))
        for key in sorted(old.keys() | new.keys())
        if not is_housekeeping(key) and old.get(key, NOT_SET) != new.get(key, NOT_SET)
    }


def _length(value: Any) -> float:
    """A training length, unlimited (None or -1) as infinity; NaN when not a length."""
    if value is None or value == -1:
        return math.inf
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return math.nan


def _only_longer(changes: dict[str, tuple[Any, Any]]) -> bool:
    return all(
        key in LENGTH_KEYS and _length(new) >= _length(old) for key, (old, new) in changes.items()
    )


def shown(value: Any) -> str:
    """A value as it is typed on the command line: ``0.001``, ``[96,64]``, ``true``, ``null``."""
    if isinstance(value, str):
        return value
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    return json.dumps(value, separators=(",", ":"))


def _listing(changes: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    parts = [f"{key}={shown(old)} there, {shown(new)} now" for key, (old, new) in changes.items()]
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _old_values(changes: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    parts = [
        f"~{key}" if old == NOT_SET else f"{'+' if new == NOT_SET else ''}{key}={shown(old)}"
        for key, (old, new) in changes.items()
    ]
    return " ".join(parts[:limit]) + (" ..." if len(parts) > limit else "")


def _folder_key() -> str:
    multirun = HydraConfig.initialized() and HydraConfig.get().mode is not None
    multirun = multirun and HydraConfig.get().mode.name == "MULTIRUN"
    return "hydra.sweep.dir" if multirun else "hydra.run.dir"


def afresh() -> str:
    """How to train afresh, in a new folder, instead of continuing the run in this one."""
    if _folder_key() == "hydra.sweep.dir":
        return "run the sweep afresh in a new folder (leave out hydra.sweep.dir)"
    return "train afresh in a new folder (leave out ckpt_path and hydra.run.dir)"


def _refusal(folder: Path, changes: dict, completed: bool, checkpoint: bool) -> str:
    state = "a completed run" if completed else f"an unfinished run (with {LAST_CHECKPOINT})"
    if _only_longer(changes):  # longer, but there is no checkpoint to continue from
        return (
            f"{folder} holds {state} that cannot be continued to a longer length "
            f"({_listing(changes)}): it has no {LAST_CHECKPOINT}. Fix: run it in a new folder "
            f"({_folder_key()}=<new folder>), or with the values of the run there "
            f"({_old_values(changes)})."
        )
    return (
        f"{folder} holds {state} made with another config: {_listing(changes)}. Only the same "
        "config (skipped when completed, else continued) or a longer run (a larger "
        "trainer.max_epochs or trainer.max_steps, all else equal: continued) may run there. "
        f"Fix: run it in a new folder ({_folder_key()}=<new folder>), or with the values of the "
        f"run there ({_old_values(changes)})."
    )
