"""Readable, collision-free names for runs and sweeps, as OmegaConf resolvers.

A single run is named by its overrides, for example ``model.embedding_sharing=False``. A job of
a sweep is named by the values the sweep varies, each under the shortest end of its key that no
other swept key shares (``model.embedding_sharing`` -> ``sharing``), for example
``sharing=False,weight=0.5``: TensorBoard shows the runs of a sweep side by side under these
names, and short names tell them apart at a glance. Housekeeping keys (paths, ``experiment=``,
...) never appear. The full keys are the swept values logged to TensorBoard's HParams dashboard.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from mtrec.runs.folder import LAST_CHECKPOINT
from mtrec.runs.twins import TWIN_KEYS

# Keys that say where things go or which preset was used, never what a run is.
HIDDEN_KEYS = (
    "experiment",
    "name",
    "ckpt_path",
    "debug",
    "threads",
    "logger",
    "search.study",
    "search.storage",
)
HIDDEN_PREFIXES = ("hydra.", "paths.", "data.path", "data.cache_dir", "callbacks.", "logger.")
MAX_NAME_LENGTH = 120
SEARCH_TRIAL = "search.trial"  # set by hydra/sweeper=optuna for each trial


def parse_overrides(overrides: list[str]) -> list[tuple[str, str, bool]]:
    """(key, value as typed, is a sweep) for each command-line override."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [
        (
            o.key_or_group,
            "" if o.is_sweep_override() else o.get_value_element_as_str(),
            o.is_sweep_override(),
        )
        for o in parsed
        if not o.is_delete()
    ]


def is_hidden(key: str) -> bool:
    key = key.lstrip("+~")
    return key in HIDDEN_KEYS or key.startswith(HIDDEN_PREFIXES)


def swept_keys(sweep_dir: str | Path) -> list[str] | None:
    """The keys a multirun varies: its sweep overrides and the sweeper's params.

    Read from the sweep's ``multirun.yaml``, so every launcher (local, joblib, submitit) sees
    the same answer; ``None`` when the file is not there.
    """
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return None
    saved = OmegaConf.load(path)
    keys = [k for k, _, sweep in parse_overrides(saved.hydra.overrides.task) if sweep]
    params = OmegaConf.select(saved, "hydra.sweeper.params") or {}
    keys += [k for k in params if k not in keys]
    sweeper = str(OmegaConf.select(saved, "hydra.sweeper._target_"))
    if sweeper.endswith("TwinsSweeper"):
        keys += [k for k in TWIN_KEYS if k not in keys]  # the twins differ in these
    if sweeper.endswith("OptunaSweeper"):
        keys = [SEARCH_TRIAL, *keys]  # a search's trials may repeat settings: named by number
    return [k for k in keys if not is_hidden(k)]


def _naming_keys() -> tuple[list[str], list[str] | None]:
    """The keys that name the current job, and for a job of a sweep every key that names one of
    its jobs (``None`` for a single run)."""
    hydra_cfg = HydraConfig.get()
    task = list(hydra_cfg.overrides.task)
    given = [k for k, _, _ in parse_overrides(task) if not is_hidden(k)]
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        swept = swept_keys(hydra_cfg.sweep.dir)
        if swept is not None:
            return [k for k in given if k in swept] or swept, swept
        return given, given  # every job of the sweep has the same command-line keys
    return given, None


def job_keys() -> list[str]:
    """The keys that name the current Hydra job (all shown overrides of a single run)."""
    return _naming_keys()[0]


def _key_ends(key: str) -> list[str]:
    """The ends of a key at its ``.`` and ``_`` boundaries, shortest first:
    ``weight``, ``factorization_weight``, ``model.factorization_weight``."""
    key = key.lstrip("+~")
    starts = [0] + [m.end() for m in re.finditer(r"[._]", key)]
    ends = [key[start:] for start in reversed(starts)]
    return [end for end in ends if end.strip("._")]


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's shortest end that no other key ends with the same way, for example
    ``model.embedding_sharing`` -> ``sharing`` and ``model.factorization_weight`` -> ``weight``;
    ``model.factorization_weight`` and ``model.regression_weight`` keep a word more each.

    The result depends on the set of keys alone, so every job of a sweep (and a rerun of the
    sweep into its folder) names its folder the same way.
    """
    ends = {key: _key_ends(key) or [key] for key in keys}
    level = dict.fromkeys(keys, 0)
    while True:
        names = {key: ends[key][min(level[key], len(ends[key]) - 1)] for key in keys}
        taken = [names[key] for key in keys]
        clashing = [
            key for key in keys if taken.count(names[key]) > 1 and level[key] < len(ends[key]) - 1
        ]
        if not clashing:
            break
        for key in clashing:
            level[key] += 1
    if len(set(names.values())) < len(names):  # e.g. ``+x`` and ``x``: keep the full keys
        return {key: key for key in keys}
    return names


def safe_name(text: str) -> str:
    """A folder name: no path separators or spaces; long names keep a hash to stay unique."""
    text = re.sub(r"[^\w=,.+\-\[\]]", "_", text)
    if len(text) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        text = f"{text[: MAX_NAME_LENGTH - 9]}-{digest}"
    return text


def run_name(default: str = "default") -> str:
    """``key=value`` of the job's naming overrides, comma-separated, or ``default``.

    A single run spells its keys out in full; a job of a sweep shortens them (``short_keys``
    over the sweep's keys), so the runs of a sweep differ early in their names.
    """
    overrides = dict((k, v) for k, v, _ in parse_overrides(HydraConfig.get().overrides.task))
    keys, sweep_keys = _naming_keys()
    label = short_keys(sweep_keys) if sweep_keys is not None else {}
    return (
        safe_name(",".join(f"{label.get(k, k)}={overrides[k]}" for k in keys if k in overrides))
        or default
    )


def run_dir(new: str, *, _root_: DictConfig) -> str:
    """The folder of a single run: ``new`` (a fresh timestamped folder), or when resuming the
    folder of the run being continued, so its checkpoints, metrics and TensorBoard run go on.

    ``ckpt_path=last`` continues the newest run with the same name and overrides that left a
    ``checkpoints/last.ckpt``; ``ckpt_path=<run>/checkpoints/<file>.ckpt`` continues ``<run>``.
    """
    checkpoint = OmegaConf.select(_root_, "ckpt_path")
    if not checkpoint:
        return new
    if checkpoint == "last":  # folder names are timestamps: the last is the newest
        pattern = f"*/{LAST_CHECKPOINT}"
        earlier = sorted(p.parents[1] for p in Path(new).parent.glob(pattern))
        return str(earlier[-1]) if earlier else new  # none: training says so
    path = Path(checkpoint)
    return str(path.parents[1]) if path.parent.name == "checkpoints" else new


def swept_values(*, _root_: DictConfig) -> dict:
    """The current job's naming keys with their composed values (empty outside Hydra); a
    config group (``weighting=pcgrad``, ``model=mf``) by the option chosen."""
    if not HydraConfig.initialized():
        return {}
    given = dict((k, v) for k, v, _ in parse_overrides(HydraConfig.get().overrides.task))
    values = {}
    for key in job_keys():
        value = OmegaConf.select(_root_, key.lstrip("+~"))
        values[key] = given.get(key, "") if OmegaConf.is_config(value) else value
    return values


def sweep_label(*, _root_: DictConfig) -> str:
    """What groups a run with the others of its sweep in a tracker: the sweep's folder under
    ``outputs/sweeps`` (``<name>/<date_time>_<token>``), or for a single run its ``name``."""
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
            folder = Path(hydra_cfg.sweep.dir)
            return f"{folder.parent.name}/{folder.name}"
    return str(_root_.get("name", "train"))


def unique_token() -> str:
    """Six random hex digits: two sweeps started in the same second get different folders."""
    return os.urandom(3).hex()


def one_minus(value: float) -> float:
    return round(1.0 - float(value), 12)


def times_three(value: int) -> int:
    """The MLP input size of MultiTaskNet for an embedding size (``[u, q, u * q]``)."""
    return 3 * int(value)


def count(node) -> int:
    """How many entries a list or dict has (``${mtrec.count:${tasks}}``: the number of tasks)."""
    return len(node)


def register_resolvers() -> None:
    resolvers = {
        "mtrec.run_name": (run_name, False),
        "mtrec.run_dir": (run_dir, False),
        "mtrec.swept_values": (swept_values, False),
        "mtrec.sweep_label": (sweep_label, False),
        "mtrec.token": (unique_token, True),  # cached: one token per sweep, shared by its jobs
        "mtrec.one_minus": (one_minus, False),
        "mtrec.times_three": (times_three, False),
        "mtrec.count": (count, False),
    }
    for name, (function, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cache)
