"""Sharing architectures (``model.net.sharing``): what a multi-task net's tasks share.

A short name chooses one of mtrec's (below); a ``_target_`` (with ``_partial_: true``) or a
dotted class path chooses any :class:`Mixer`, a researcher's own included (README, "A new
sharing architecture").
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from hydra.utils import get_class

from mtrec.errors import ConfigError, shown
from mtrec.models.mixers.base import Mixer, Tables
from mtrec.models.mixers.mixtures import CrossStitchTables, DenseMixture, TableMixture

#: the architectures whose experts are dense maps shared by every id
DENSE_MIXERS = ("shared_bottom", "mmoe_mlp", "cgc_mlp", "ple_mlp")
#: those whose experts are embedding tables (:mod:`mtrec.models.embedding_experts`)
TABLE_MIXERS = ("mmoe", "cgc", "ple", "stem")
#: shared experts when ``model.net.experts`` is null. A table mixture's row holds every
#: expert's row, so its step costs in proportion; fewer tables rank as well (docs/multitask.md)
DEFAULT_EXPERTS = {"mmoe": 2, "cgc": 1, "ple": 1, "stem": 1} | dict.fromkeys(DENSE_MIXERS, 4)
#: mtrec's architectures by short name; ``shared``, ``separate`` and ``items`` choose tables only
SHARINGS = ("shared", "separate", "items", *TABLE_MIXERS, *DENSE_MIXERS, "cross_stitch")

__all__ = ["DENSE_MIXERS", "SHARINGS", "TABLE_MIXERS", "Mixer", "Tables", "mixer_factory"]


def mixer_factory(sharing: str | Callable[..., Mixer], settings: dict) -> Callable[..., Mixer]:
    """What builds the mixer ``sharing`` names, called as ``factory(data, tasks, dim,
    encoder=..., graph_layers=...)``. ``settings``: the experts' settings of the short names
    (``experts``, ``task_experts``, ``levels``, ``expert_norm``, ``residual``)."""
    if callable(sharing):
        return sharing
    if sharing not in SHARINGS:
        if "." in sharing:  # a class path: my_package.sharing.MyMixer
            found = get_class(sharing)
            if isinstance(found, type) and issubclass(found, Mixer):
                return found
        raise ConfigError(
            f"model.net.sharing={shown(sharing)} is not an architecture: use one of "
            f"{', '.join(SHARINGS)}, or a Mixer subclass (my_package.sharing.MyMixer)."
        )
    experts = settings.get("experts")
    experts = DEFAULT_EXPERTS.get(sharing, 1) if experts is None else experts
    levels, task_experts = settings.get("levels", 2), settings.get("task_experts", 1)
    if sharing in TABLE_MIXERS:
        return partial(
            TableMixture, kind=sharing, experts=experts, task_experts=task_experts, levels=levels
        )
    if sharing in DENSE_MIXERS:
        dense = {k: settings.get(k, False) for k in ("expert_norm", "residual")}
        return partial(
            DenseMixture,
            kind=sharing,
            experts=experts,
            task_experts=task_experts,
            levels=levels,
            **dense,
        )
    if sharing == "cross_stitch":
        return CrossStitchTables
    return partial(
        Tables, own_users=sharing in ("separate", "items"), own_items=sharing == "separate"
    )
