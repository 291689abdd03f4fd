"""Hyperparameter search on Optuna's current API: the search space in Hydra's sweep syntax,
trials pruned from their per-epoch validation metric (``hparams_search=optuna``)."""
