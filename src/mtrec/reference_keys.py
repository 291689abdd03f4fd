"""The reference study's names for its settings, kept working as aliases.

``model.factorization_weight`` (λF), ``model.regression_weight`` (λR) and
``model.embedding_sharing`` are how the reference study and its commands (``make sweep``, the
README) set the loss weights and the sharing; the settings themselves live where their code
reads them: the weighting's config (``weighting.weights.interaction`` and ``.rating``) and the
net's (``model.net.embedding_sharing``). Set, an alias overrides its setting; left null it
changes nothing, and a config without the setting (a strategy without fixed weights, a model
without the option) does not read it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

ALIASES = {
    "model.factorization_weight": "weighting.weights.interaction",
    "model.regression_weight": "weighting.weights.rating",
    "model.embedding_sharing": "model.net.embedding_sharing",
}


def apply_reference_keys(cfg: DictConfig) -> None:
    """Copy each alias that is set onto the setting it names (idempotent)."""
    for alias, key in ALIASES.items():
        value = OmegaConf.select(cfg, alias, default=None, throw_on_missing=False)
        parent, name = key.rsplit(".", 1)
        settings = OmegaConf.select(cfg, parent, default=None)
        if value is None or not isinstance(settings, DictConfig) or name not in settings:
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
