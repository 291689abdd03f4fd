"""The reference study's names for the fixed loss weights, kept working as aliases.

``model.factorization_weight`` (λF) and ``model.regression_weight`` (λR) are how the
reference study and its commands (``make sweep``, the README) set the weights; the weights
themselves live in the weighting's config (``weighting.weights.interaction`` and
``.rating``). Set, an alias overrides its weight; left null it changes nothing, and a
strategy without fixed weights does not read it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

ALIASES = {
    "model.factorization_weight": "weighting.weights.interaction",
    "model.regression_weight": "weighting.weights.rating",
}


def apply_reference_keys(cfg: DictConfig) -> None:
    """Copy each alias that is set onto the weight it names (idempotent)."""
    for alias, key in ALIASES.items():
        value = OmegaConf.select(cfg, alias, default=None, throw_on_missing=False)
        weights = OmegaConf.select(cfg, key.rsplit(".", 1)[0], default=None)
        if value is None or not isinstance(weights, DictConfig):
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
