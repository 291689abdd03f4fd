"""The reference study's names for its settings, kept working as aliases.

``model.factorization_weight`` (λF), ``model.regression_weight`` (λR) and
``model.embedding_sharing`` are how the reference study and its commands (``make sweep``, the
README) set the loss weights and the sharing; the settings themselves live where their code
reads them: the fixed weighting's weights (``weighting.weights.interaction`` and ``.rating``,
each set only where the run trains that task; λR is 1 - λF unless set) and the net's
(``model.net.embedding_sharing``). Set, an alias overrides its setting; left null it changes
nothing, and a config without the setting (a strategy without fixed weights, a model without
the option) does not read it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from mtrec.mtl.tasks import Interaction, Rating

WEIGHTS = "weighting.weights"
ALIASES = {
    "model.factorization_weight": f"{WEIGHTS}.{Interaction.name}",
    "model.regression_weight": f"{WEIGHTS}.{Rating.name}",
    "model.embedding_sharing": "model.net.embedding_sharing",
}


def apply_reference_keys(cfg: DictConfig) -> None:
    """Copy each alias that is set onto the setting it names (idempotent)."""
    values = {alias: _value(cfg, alias) for alias in ALIASES}
    factorization = values["model.factorization_weight"]
    number = isinstance(factorization, int | float) and not isinstance(factorization, bool)
    if values["model.regression_weight"] is None and number:  # λR = 1 - λF unless set
        values["model.regression_weight"] = round(1.0 - float(factorization), 12)
    trained = cfg.get("tasks") or {}
    for alias, key in ALIASES.items():
        value = values[alias]
        parent, name = key.rsplit(".", 1)
        settings = OmegaConf.select(cfg, parent, default=None)
        if value is None or not isinstance(settings, DictConfig):
            continue
        if parent == WEIGHTS:  # a weight of a trained task only, unless given as well
            derived = alias == "model.regression_weight" and _value(cfg, alias) is None
            if name not in trained or (derived and name in settings):
                continue
        elif name not in settings:
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)


def _value(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
