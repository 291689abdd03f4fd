"""Any Trainer argument can be set as ``trainer.<name>``, as the README says."""

from __future__ import annotations

import inspect

import lightning as L
from hydra import compose, initialize_config_module


def trainer_config(*overrides):
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides)).trainer


def test_every_trainer_argument_is_a_key_of_the_trainer_config():
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    keys = set(trainer_config()) - {"_target_"}
    # callbacks and loggers come from their own config groups
    assert keys == arguments - {"callbacks", "logger"}


def test_a_trainer_argument_is_set_without_a_plus(ratings_folder, tmp_path, run_cli):
    assert trainer_config("trainer.limit_train_batches=10").limit_train_batches == 10
    status, output = run_cli(
        f"data.path={ratings_folder}",
        "trainer.limit_train_batches=1",
        "trainer.max_epochs=1",
        "model.compile=false",
    )
    assert status == 0, output
