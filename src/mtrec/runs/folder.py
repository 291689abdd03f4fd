"""The files of a run folder: their names, and reading and writing them.

A run folder (a single run's, or one job's of a sweep) holds::

    .hydra/config.yaml      the run config: the composed config,
    .hydra/hydra.yaml       Hydra's own config of the run (its folder, job number, ...),
    .hydra/overrides.yaml   the command-line overrides;
    .hydra/saved/           a copy of those three, taken when the folder's work began
    job.json                status (completed / failed / unfinished), error, wall time, overrides
    metrics.json            final and best (with epoch) value of every metric, per-epoch history
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
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtrec.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

CONFIG_DIR = ".hydra"
CONFIG = "config.yaml"
HYDRA = "hydra.yaml"
OVERRIDES = "overrides.yaml"
SAVED_DIR = "saved"  # inside CONFIG_DIR
JOB = "job.json"
METRICS = "metrics.json"
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
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


def write_eval(folder: str | Path, checkpoint: str | Path, metrics: dict[str, float]) -> Path:
    """Write the metrics of ``checkpoint`` evaluated again; return the file."""
    path = Path(folder) / EVAL.format(checkpoint=Path(checkpoint).stem)
    atomic_write_text(
        path, json.dumps({"checkpoint": str(checkpoint), "metrics": metrics}, indent=2)
    )
    return path


def last_checkpoint(folder: str | Path) -> Path:
    return Path(folder) / LAST_CHECKPOINT


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
