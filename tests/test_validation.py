"""Config checks before any work: one message naming the key, the value and what is allowed.

The ``test_cli_*`` tests run ``mtrec-train`` and need ``validate(cfg)`` called first thing in
``mtrec.train.train``; the others call :func:`mtrec.validation.validate` directly.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import mtrec.train  # noqa: F401  (registers the resolvers that composing needs)
from mtrec.data.movielens import VARIANTS
from mtrec.data.synthetic import SHAPES
from mtrec.errors import ConfigError, UserError
from mtrec.mtl.losses import FACTORIZATION_LOSSES
from mtrec.validation import validate

MODELS = ["multitask", "mf", "dense", "biased_dot", "genre_mf", "genre_dense", "sequence_lstm"]
MODELS += ["popularity", "ease", "biased_mf"]
TIMES_THREE = (
    "model.net.layer_sizes=['${mtrec.times_three:${model.net.embedding_dim}}',64]"  # as optuna
)


def config(*overrides: str):
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def message(*overrides: str) -> str:
    with pytest.raises(ConfigError) as error:
        validate(config(*overrides))
    assert isinstance(error.value, UserError)  # mtrec-train: the message alone, exit status 2
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        *([f"model={name}"] for name in MODELS),
        ["data=synthetic"],
        ["data=synthetic", "data.shape=ml-25m"],
        ["data=synthetic", "data.variant=ml-25m"],  # synthetic data take the variant's shape
        ["experiment=large"],
        ["experiment=large", "data=movielens"],  # the real ML-25M
        ["model.sparse_rows=true", "optimizer=adamw"],
        ["model.sparse_rows=true", "trainer=ddp"],  # DDP averages the sparse gradients
        ["debug=fast"],
        ["experiment=zoo"],
        ["experiment=cs330"],
        ["experiment=collapse"],
        ["experiment=best"],
        ["model.net.encoder=graph", "model.net.graph_layers=2"],
        [
            "model.net.embedding_dim=auto",
            "model.net.layer_sizes=[5,3]",
        ],  # the net sizes the MLP itself
        ["model.net.embedding_dim=16", "model.net.layer_sizes=[48,16]"],
        ["model.net.embedding_dim=16", TIMES_THREE],
        ["model.net.embedding_dim=auto", TIMES_THREE],  # cannot resolve: left to the net
        ["model.factorization_weight=1"],  # rating weight 0, the interaction head still trains
        ["model.factorization_weight=0"],
        ["model.factorization_weight=1.5", "model.regression_weight=0.2"],
        ["model.regression_weight=null"],
        ["data.val_fraction=0.1", "data.test_fraction=0.1"],
        ["model.negative_rating_ratio=2", "data.num_negatives=2"],
        ["optimizer=sgd"],
        ["model.l1=1e-6", "model.l2=1e-6"],
    ],
    ids=lambda overrides: " ".join(overrides) or "defaults",
)
def test_valid_configs_pass(overrides):
    validate(config(*overrides))


def test_keys_a_config_lacks_are_skipped():
    validate(OmegaConf.create({}))
    validate(OmegaConf.create({"model": {"name": "custom"}, "data": {"batch_size": 8}}))


# (overrides, what the message must contain: the key=value as typed, then what is allowed)
CASES = {
    "factorization_weight negative": (
        ["model.factorization_weight=-1"],
        ["model.factorization_weight=-1 is not valid", "a number >= 0"],
    ),
    "factorization_weight not a number": (
        ["model.factorization_weight=abc"],
        ["model.factorization_weight=abc is not valid", "a number >= 0"],
    ),
    "regression_weight negative": (
        ["model.regression_weight=-0.5"],
        ["model.regression_weight=-0.5 is not valid", "a number >= 0"],
    ),
    "regression_weight negative through factorization_weight > 1": (
        ["model.factorization_weight=1.5"],
        ["model.regression_weight=-0.5 is not valid", "1 - model.factorization_weight"],
    ),
    "both weights zero": (
        ["model.factorization_weight=0", "model.regression_weight=0"],
        [
            "model.factorization_weight=0 and model.regression_weight=0:",
            "model=multitask",
            "nothing would be trained",
            "model.factorization_weight=0.99",
        ],
    ),
    "the only head's weight zero": (
        ["model=mf", "model.factorization_weight=1"],
        [
            "model.regression_weight=0.0 (1 - model.factorization_weight):",
            "model=mf",
            "nothing would be trained",
            "model.factorization_weight=0",
        ],
    ),
    "layer_sizes[0] != 3 * embedding_dim": (
        ["model.net.layer_sizes=[64,32]"],
        [
            "model.net.layer_sizes=[64,32] does not fit model.net.embedding_dim=32",
            "3 * model.net.embedding_dim = 96",
            "model.net.layer_sizes=[96,32]",
        ],
    ),
    "embedding_dim changed alone": (
        ["model.net.embedding_dim=16"],
        ["model.net.layer_sizes=[96,64] does not fit model.net.embedding_dim=16", "[48,64]"],
    ),
    "layer_sizes not a list": (
        ["model.net.layer_sizes=96"],
        ["model.net.layer_sizes=96 is not valid", "a list of positive integers"],
    ),
    "layer size zero": (
        ["model.net.layer_sizes=[96,0]"],
        ["model.net.layer_sizes=[96,0] is not valid", "a list of positive integers"],
    ),
    "test_fraction zero": (
        ["data.test_fraction=0"],
        ["data.test_fraction=0 is not valid", "between 0 and 1, both excluded"],
    ),
    "test_fraction one": (
        ["data.test_fraction=1"],
        ["data.test_fraction=1 is not valid", "between 0 and 1, both excluded"],
    ),
    "test_fraction above one": (
        ["data.test_fraction=1.5"],
        ["data.test_fraction=1.5 is not valid", "between 0 and 1, both excluded"],
    ),
    "val_fraction one": (
        ["data.val_fraction=1"],
        ["data.val_fraction=1 is not valid", "a number in [0, 1), 0 for no carve-out"],
    ),
    "val_fraction negative": (
        ["data.val_fraction=-0.1"],
        ["data.val_fraction=-0.1 is not valid", "a number in [0, 1)"],
    ),
    "fractions leave no training rows": (
        ["data.test_fraction=0.5", "data.val_fraction=0.5"],
        [
            "data.test_fraction=0.5 and data.val_fraction=0.5 add up to 1",
            "no ratings for training",
            "keep their sum below 1",
        ],
    ),
    "unknown variant": (
        ["data.variant=ml-5m"],
        ["data.variant=ml-5m is not valid", "one of " + ", ".join(VARIANTS)],
    ),
    "unknown synthetic shape": (
        ["data=synthetic", "data.shape=ml-2m"],
        ["data.shape=ml-2m is not valid", "one of " + ", ".join(SHAPES)],
    ),
    "batch_size zero": (
        ["data.batch_size=0"],
        ["data.batch_size=0 is not valid", "a positive integer"],
    ),
    "batch_size fractional": (
        ["data.batch_size=2.5"],
        ["data.batch_size=2.5 is not valid", "a positive integer"],
    ),
    "batches_per_chunk zero": (
        ["data.batches_per_chunk=0"],
        ["data.batches_per_chunk=0 is not valid", "a positive integer"],
    ),
    "num_negatives zero": (
        ["data.num_negatives=0"],
        ["data.num_negatives=0 is not valid", "an integer >= 1"],
    ),
    "max_epochs zero": (
        ["trainer.max_epochs=0"],
        ["trainer.max_epochs=0 is not valid", "an integer >= 1"],
    ),
    "embedding_dim zero": (
        ["model.net.embedding_dim=0"],
        ["model.net.embedding_dim=0 is not valid", "a positive integer or auto"],
    ),
    "embedding_dim misspelt auto": (
        ["model=mf", "model.net.embedding_dim=Auto"],
        ["model.net.embedding_dim=Auto is not valid", "a positive integer or auto"],
    ),
    "hidden_size zero": (
        ["model=dense", "model.net.hidden_size=0"],
        ["model.net.hidden_size=0 is not valid", "a positive integer"],
    ),
    "history_length zero": (
        ["model=sequence_lstm", "model.history_length=0"],
        ["model.history_length=0 is not valid", "a positive integer"],
    ),
    "l1 negative": (
        ["model.l1=-1"],
        ["model.l1=-1 is not valid", "a number >= 0"],
    ),
    "l2 negative": (
        ["model.l2=-0.1"],
        ["model.l2=-0.1 is not valid", "a number >= 0"],
    ),
    "lr zero": (
        ["optimizer.lr=0"],
        ["optimizer.lr=0 is not valid", "a number > 0"],
    ),
    "lr negative, sgd": (
        ["optimizer=sgd", "optimizer.lr=-0.05"],
        ["optimizer.lr=-0.05 is not valid", "a number > 0"],
    ),
    "unknown factorization loss": (
        ["model.factorization_loss=foo"],
        ["model.factorization_loss=foo is not valid", "one of " + ", ".join(FACTORIZATION_LOSSES)],
    ),
    "more rating negatives than sampled": (
        ["model.negative_rating_ratio=3"],
        [
            "model.negative_rating_ratio=3 is more than data.num_negatives=1",
            "data.num_negatives=3",
        ],
    ),
    "negative_rating_ratio negative": (
        ["model.negative_rating_ratio=-1"],
        ["model.negative_rating_ratio=-1 is not valid", "an integer >= 0"],
    ),
    "sparse rows with sgd": (
        ["model.sparse_rows=true", "optimizer=sgd"],
        ["model.sparse_rows=true updates the embedding tables", "(not torch.optim.SGD)"],
    ),
    "sparse rows with l2": (
        ["model.sparse_rows=true", "model.l2=1e-6"],
        ["model.sparse_rows=true with model.l1=0, model.l2=1e-06", "model.embedding_l2"],
    ),
    "sparse rows with per-task gradients under ddp": (
        ["model.sparse_rows=true", "trainer=ddp", "weighting=pcgrad"],
        ["model.sparse_rows=true with PCGrad (or model.diagnostics=true) under DDP"],
    ),
    "sparse rows with diagnostics under ddp": (
        ["model.sparse_rows=true", "trainer=ddp", "model.diagnostics=true"],
        ["model.sparse_rows=true with FixedWeighting", "weighting=fixed, or trainer=default"],
    ),
    "a fix of dense experts without them": (
        ["model.net.residual=true", "model.net.sharing=mmoe"],
        ["model.net.residual=true changes dense experts", "shared_bottom, mmoe_mlp"],
    ),
    "expert_norm not a boolean": (
        ["model.net.expert_norm=2", "model.net.sharing=mmoe_mlp"],
        ["model.net.expert_norm=2 is not valid", "true or false"],
    ),
    "synthetic shape from the variant": (
        ["data=synthetic", "data.variant=ml-5k"],
        ["data.shape=ml-5k is not valid", "ml-25m"],
    ),
}


@pytest.mark.parametrize("overrides, expected", CASES.values(), ids=CASES.keys())
def test_a_bad_value_is_named_with_what_is_allowed(overrides, expected):
    text = message(*overrides)
    assert text.startswith(expected[0])
    for part in expected[1:]:
        assert part in text


def test_the_first_problem_in_rule_order_is_reported():
    text = message("model.l1=-1", "data.batch_size=0")
    assert text.startswith("data.batch_size=0") and "model.l1" not in text


# mtrec-train end to end: these need validate(cfg) first thing in mtrec.train.train.
# trainer.max_epochs=1 keeps a run that is not stopped short.
CLI_CASES = {
    "negative weight": (
        ["model.factorization_weight=-1"],
        "model.factorization_weight=-1 is not valid: use a number >= 0",
    ),
    "fractions": (
        ["data.test_fraction=0.5", "data.val_fraction=0.5"],
        "data.test_fraction=0.5 and data.val_fraction=0.5 add up to 1",
    ),
    "layer sizes": (
        ["model.net.layer_sizes=[64,32]"],
        "model.net.layer_sizes=[64,32] does not fit model.net.embedding_dim=32",
    ),
    "unknown variant": (["data.variant=ml-5m"], "data.variant=ml-5m is not valid: use one of"),
    "unknown shape": (
        ["data=synthetic", "data.shape=ml-2m"],
        "data.shape=ml-2m is not valid: use one of",
    ),
}


@pytest.mark.parametrize("overrides, expected", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_stops_before_training_with_the_message(
    run_cli, ratings_folder, tmp_path, overrides, expected
):
    status, text = run_cli(f"data.path={ratings_folder}", "trainer.max_epochs=1", *overrides)
    assert status == 2
    assert expected in text
    assert "Traceback" not in text
    assert not list(tmp_path.rglob("checkpoints")) and not list(tmp_path.rglob("metrics.json"))


def test_cli_unknown_model_lists_the_available_ones(run_cli, ratings_folder, tmp_path):
    status, text = run_cli(f"data.path={ratings_folder}", "model=foo")
    assert status != 0
    assert "foo" in text
    for name in MODELS:
        assert name in text
    assert "model_module" not in text  # the shared settings are not a model
    assert not list(tmp_path.rglob("checkpoints"))
