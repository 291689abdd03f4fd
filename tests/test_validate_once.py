"""One run validates its config once and applies the reference's keys once, whether it
starts from ``mtrec-train`` (:func:`mtrec.train.main`) or from :func:`mtrec.train.train`."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from hydra import compose, initialize_config_module

import mtrec.reference_keys
import mtrec.train
import mtrec.validation
from conftest import SHORT_RUN

TINY = [*SHORT_RUN, "trainer.max_epochs=1", "model.factorization_weight=0.8"]


def count_calls(monkeypatch, function, calls: Counter, configs: list) -> None:
    """Count the calls of ``function`` under every name an ``mtrec`` module binds it to."""

    def counted(cfg, *args, **kwargs):
        calls[function.__name__] += 1
        configs.append(cfg)
        return function(cfg, *args, **kwargs)

    for name, module in list(sys.modules.items()):
        ours = name == "mtrec" or name.startswith("mtrec.")
        if ours and getattr(module, function.__name__, None) is function:
            monkeypatch.setattr(module, function.__name__, counted)


@pytest.mark.parametrize("entry", ["main", "train"])
def test_a_run_validates_and_applies_the_reference_keys_once(
    entry, monkeypatch, ratings_folder, run_cli, tmp_path
):
    calls, configs = Counter(), []
    count_calls(monkeypatch, mtrec.validation.validate, calls, configs)
    count_calls(monkeypatch, mtrec.reference_keys.apply_reference_keys, calls, configs)
    overrides = [f"data.path={ratings_folder}", *TINY]
    if entry == "main":
        status, output = run_cli(*overrides)
        assert status == 0, output
    else:
        with initialize_config_module("mtrec.conf", version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, "~logger", f"paths.root_dir={tmp_path}"])
        cfg.paths.output_dir = str(tmp_path / "run")
        mtrec.train.train(cfg)
    assert calls == {"validate": 1, "apply_reference_keys": 1}
    for cfg in configs:  # the keys were applied all the same: λF reached the weighting
        assert cfg.weighting.weights.interaction == 0.8
