"""The files of a run folder: their names, and reading and writing them.

A run folder (a single run's, or one job's of a sweep) holds::

    .hydra/config.yaml      the run config: the composed config,
    .hydra/hydra.yaml       Hydra's own config of the run (its folder, job number, ...),
    .hydra/overrides.yaml   the command-line overrides;
    .hydra/saved/           a copy of those three, taken when the folder's work began
    job.json                status (completed / failed / interrupted / unfinished), error,
                            wall time, overrides
    metrics.json            final and best (with epoch) value of every metric, per-epoch history
    tasks.json              the run's tasks in its order, each one's metrics (its main metric
                            first) and which of them are better lower, as reports read them
    checkpoints/last.ckpt   the latest epoch's checkpoint
    eval_<checkpoint>.json  metrics of a checkpoint evaluated again (mtrec-eval)

Hydra rewrites the three ``.hydra`` files at every launch, before any code of the run runs;
the copy in ``.hydra/saved`` keeps the config that the folder's checkpoint and metrics were
computed with, so a later launch into the folder can be compared with it
(:mod:`mtrec.runs.rerun`).

Every module that reads or writes these files goes through here.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from mtrec.errors import UserError
from mtrec.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from mtrec.mtl.tasks import Declared, Scored

log = logging.getLogger(__name__)

CONFIG_DIR = ".hydra"
CONFIG = "config.yaml"
HYDRA = "hydra.yaml"
OVERRIDES = "overrides.yaml"
SAVED_DIR = "saved"  # inside CONFIG_DIR
JOB = "job.json"
METRICS = "metrics.json"
TASKS = "tasks.json"
LAST_CHECKPOINT = "checkpoints/last.ckpt"
EVAL = "eval_{checkpoint}.json"


# --- reading and writing -------------------------------------------------------------------


def config_dir(folder: str | Path, saved: bool = False) -> Path:
    path = Path(folder) / CONFIG_DIR
    return path / SAVED_DIR if saved else path


def has_config(folder: str | Path) -> bool:
    """Whether ``folder`` is a run folder: it holds a run config."""
    return (config_dir(folder) / CONFIG).exists() or (config_dir(folder, True) / CONFIG).exists()


def run_folders(parent: str | Path) -> list[Path]:
    """The run folders directly inside ``parent`` (the jobs of a sweep), sorted by name."""
    return sorted(p.parent for p in Path(parent).glob(f"*/{CONFIG_DIR}") if has_config(p.parent))


def _config_file(folder: str | Path, name: str) -> Path:
    """The saved copy of a ``.hydra`` file where there is one, else Hydra's own."""
    saved = config_dir(folder, saved=True) / name
    return saved if saved.exists() else config_dir(folder) / name


def read_config(folder: str | Path) -> DictConfig:
    """The run config (``.hydra/config.yaml``), interpolations left as they are."""
    return OmegaConf.load(_config_file(folder, CONFIG))


def read_hydra(folder: str | Path) -> DictConfig:
    """Hydra's config of the run: the ``hydra`` node of ``.hydra/hydra.yaml``."""
    return OmegaConf.load(_config_file(folder, HYDRA)).hydra


def read_overrides(folder: str | Path) -> list[str]:
    """The command-line overrides of the run; none when the file is not there."""
    path = _config_file(folder, OVERRIDES)
    return [str(o) for o in OmegaConf.load(path)] if path.exists() else []


_DAMAGED_JSON = {
    JOB: "read as no record: the run counts as unfinished (running it again continues it from "
    f"{LAST_CHECKPOINT}, or trains it afresh without one)",
    METRICS: "read as no metrics: the run counts as unfinished (running it again continues it "
    f"from {LAST_CHECKPOINT} and writes the file anew)",
    TASKS: "read as no record: the run's tasks are read from the metrics it reported, as for a "
    "run from before the file (the run writes the file anew when it next starts fitting)",
}
_warned: set[Path] = set()  # damaged files already reported by this process


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; empty when there is none. A damaged file (cut short, not
    JSON, unreadable) counts as none, with one warning naming it, and is left as it is until
    the run's next record replaces it."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as error:
        reason = error.strerror or str(error)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        reason = f"not valid JSON: {error}"
    else:
        if isinstance(record, dict):
            return record
        reason = f"a JSON {type(record).__name__}, not an object"
    if path not in _warned:
        _warned.add(path)
        log.warning(
            "%s cannot be read (%s); %s. To keep the damaged copy, move it aside before then.",
            path,
            reason,
            _DAMAGED_JSON.get(path.name, "read as empty"),
        )
    return {}


def read_job(folder: str | Path) -> dict:
    """``job.json``: status, error, wall time, overrides; empty when there is none."""
    return _read_json(Path(folder) / JOB)


def write_job(folder: str | Path, record: dict) -> None:
    atomic_write_text(Path(folder) / JOB, json.dumps(record, indent=2))


def read_metrics(folder: str | Path) -> dict:
    """``metrics.json``: ``final``, ``best`` and ``history``; empty when there is none."""
    return _read_json(Path(folder) / METRICS)


def write_metrics(path: str | Path, record: dict) -> None:
    """Write a metrics record to ``path`` (a run folder's ``metrics.json``)."""
    atomic_write_text(path, json.dumps(record, indent=2))


def write_tasks(folder: str | Path, tasks: Sequence[Scored]) -> None:
    """Write ``tasks.json``: each task's declaration (:meth:`~mtrec.mtl.tasks.Scored.declared`)
    by name, in the run's task order, so reports read a task without importing its class."""
    record = {task.name: task.declared() for task in tasks}
    atomic_write_text(Path(folder) / TASKS, json.dumps(record, indent=2))


def read_tasks(folder: str | Path, metrics: Mapping | None = None) -> tuple[Declared, ...]:
    """The tasks of a run folder as its ``tasks.json`` declares them, in the run's order. A
    folder written before that file (or whose file cannot be read): the tasks of
    :func:`reported_tasks` in its ``metrics`` record (by default its ``metrics.json``)."""
    from mtrec.mtl.tasks import Declared

    path = Path(folder) / TASKS
    record = _read_json(path)
    if record and all(_is_declaration(entry) for entry in record.values()):
        return tuple(Declared.read(name, entry) for name, entry in record.items())
    if record and path not in _warned:
        _warned.add(path)
        log.warning(
            '%s cannot be read (each task\'s entry must be {"metrics": [its main metric, ...], '
            '"lower_is_better": [...]}); %s. To keep the damaged copy, move it aside before then.',
            path,
            _DAMAGED_JSON[TASKS],
        )
    return reported_tasks(read_metrics(folder) if metrics is None else metrics)


def _is_declaration(entry) -> bool:
    """Whether ``entry`` is a task's entry of ``tasks.json`` as :func:`write_tasks` writes it:
    a non-empty list of metric names, and a list of those that are better lower."""
    if not isinstance(entry, dict):
        return False
    metrics, lower = entry.get("metrics"), entry.get("lower_is_better", [])
    if not (isinstance(metrics, list) and metrics and isinstance(lower, list)):
        return False
    return all(isinstance(name, str) for name in metrics + lower)


def reported_tasks(metrics: Mapping) -> tuple[Declared, ...]:
    """The tasks a run from before ``tasks.json`` trained, read from its metrics record: each
    built-in task whose main metric it reports (under ``val/`` or ``test/``, in ``final`` or
    any epoch of ``history``), in the order the built-in tasks were defined.

    This fallback for old run folders is the only place that lists the built-in tasks: those
    were the only tasks before runs declared theirs. A run folder since then names its own.
    """
    from mtrec.mtl.tasks import Declared, Interaction, Like, Rating

    reported = set(metrics.get("final", {}))
    reported.update(name for entry in metrics.get("history", []) for name in entry)
    return tuple(
        Declared(task.name, task.metrics, task.lower_is_better)
        for task in (Interaction, Rating, Like)  # every task there was before tasks.json
        if {f"val/{task.metrics[0]}", f"test/{task.metrics[0]}"} & reported
    )


def write_eval(folder: str | Path, checkpoint: str | Path, metrics: dict[str, float]) -> Path:
    """Write the metrics of ``checkpoint`` evaluated again; return the file."""
    path = Path(folder) / EVAL.format(checkpoint=Path(checkpoint).stem)
    atomic_write_text(
        path, json.dumps({"checkpoint": str(checkpoint), "metrics": metrics}, indent=2)
    )
    return path


def last_checkpoint(folder: str | Path) -> Path:
    return Path(folder) / LAST_CHECKPOINT


class DamagedCheckpoint(UserError):
    """A checkpoint to continue from cannot be read (cut short by a full disk or a copy that
    did not finish): training stops before any work, and the file is left as it is."""


def read_checkpoint(path: str | Path, fix: str) -> dict:
    """The contents of checkpoint ``path``, its tensors mapped from the file rather than read;
    :class:`DamagedCheckpoint` naming the file and ``fix`` when it cannot be read."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise  # a whole file holding objects other than tensors: not damage
        failure: Exception = error
    except Exception:  # mmap needs the zip format: try the file as plain bytes
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as plain:
            failure = plain
    size = Path(path).stat().st_size if Path(path).exists() else 0
    reason = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
    reason = "it is empty" if size == 0 else f"{size} bytes, {reason}"
    raise DamagedCheckpoint(
        f"The checkpoint {path} is damaged ({reason}), so training cannot continue from it: "
        f"a disk that filled up or a copy that did not finish leaves such a file. mtrec leaves "
        f"it as it is. Fix: put an intact copy in its place, or {fix}."
    ) from None


def completed_metrics(folder: str | Path) -> dict[str, float] | None:
    """The final metrics of a run folder whose ``job.json`` says it completed, else ``None``."""
    if read_job(folder).get("status") != "completed":
        return None
    metrics = read_metrics(folder)
    return metrics.get("final") if "final" in metrics else None


def save_config_copy(folder: str | Path, cfg: DictConfig | None = None) -> None:
    """Copy Hydra's ``.hydra`` files of this launch to ``.hydra/saved`` (the config of the
    folder's work from now on); ``cfg`` stands in for a ``config.yaml`` Hydra did not write."""
    for name in (CONFIG, HYDRA, OVERRIDES):
        source = config_dir(folder) / name
        if source.exists():
            atomic_write_bytes(config_dir(folder, saved=True) / name, source.read_bytes())
        elif name == CONFIG and cfg is not None:
            atomic_write_text(config_dir(folder, saved=True) / name, OmegaConf.to_yaml(cfg))


def restore_config_files(folder: str | Path) -> None:
    """Put Hydra's ``.hydra`` files back as the saved copy has them (a launch that did no work)."""
    for name in (CONFIG, HYDRA, OVERRIDES):
        saved = config_dir(folder, saved=True) / name
        target = config_dir(folder) / name
        if saved.exists() and (not target.exists() or target.read_bytes() != saved.read_bytes()):
            atomic_write_bytes(target, saved.read_bytes())
