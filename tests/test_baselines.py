"""The baselines (popularity, EASE, biased MF) and checkpoint selection on validation."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.models import EASE, BiasedMatrixFactorization, Popularity
from mtrec.train import train


def interactions(pairs: list[tuple[int, int]], num_users: int, num_items: int) -> Interactions:
    users, items = (torch.tensor(column) for column in zip(*pairs, strict=True))
    ratings = torch.arange(1, len(pairs) + 1, dtype=torch.float32) % 5 + 1
    return Interactions(
        users, items, ratings, torch.arange(len(pairs)), num_users=num_users, num_items=num_items
    )


PAIRS = [(0, 0), (0, 1), (0, 3), (1, 1), (1, 2), (2, 0), (2, 2), (2, 3), (2, 4), (3, 4), (3, 1)]


def test_ease_matches_a_direct_numpy_computation():
    train_part = interactions(PAIRS, num_users=4, num_items=5)
    x = np.zeros((4, 5))
    for user, item in PAIRS:
        x[user, item] = 1.0
    reg = 2.0
    p = np.linalg.inv(x.T @ x + reg * np.eye(5))
    b = np.eye(5) - p / np.diag(p)  # B_ij = delta_ij - P_ij / P_jj
    np.fill_diagonal(b, 0.0)
    net = EASE(DataInfo(4, 5, train=train_part), reg=reg)
    np.testing.assert_allclose(net.weights.numpy(), b, rtol=1e-5, atol=1e-6)
    users = torch.tensor([0, 2, 3])
    np.testing.assert_allclose(net.score_all_items(users).numpy(), x[[0, 2, 3]] @ b, atol=1e-5)
    pairs = net.interaction_logits(torch.tensor([1, 3]), torch.tensor([4, 0]))
    np.testing.assert_allclose(pairs.numpy(), [(x @ b)[1, 4], (x @ b)[3, 0]], atol=1e-5)


def test_ease_refuses_a_catalogue_too_large_with_the_fix():
    train_part = interactions(PAIRS, num_users=4, num_items=5)
    with pytest.raises(Exception, match="model=ease needs an items x items matrix: 5 items"):
        EASE(DataInfo(4, 5, train=train_part), max_items=4)


def test_popularity_ranks_items_by_training_count_for_everyone():
    net = Popularity(DataInfo(4, 5, train=interactions(PAIRS, num_users=4, num_items=5)))
    counts = [2, 3, 2, 2, 2]  # item 1 is the most rated
    scores = net.score_all_items(torch.tensor([0, 3]))
    assert scores.tolist() == [counts, counts]
    assert net.interaction_logits(
        torch.tensor([[0], [1]]), torch.tensor([[1, 4], [0, 1]])
    ).tolist() == [
        [3, 2],
        [2, 3],
    ]


def test_biased_mf_starts_at_the_training_mean():
    train_part = interactions(PAIRS, num_users=4, num_items=5)
    net = BiasedMatrixFactorization(DataInfo(4, 5, train=train_part), embedding_dim=8)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    predicted = net.ratings(users, items)
    dot = (net.user_embeddings(users) * net.item_embeddings(items)).sum(-1)
    assert float(net.mean_rating) == pytest.approx(float(train_part.ratings.mean()))
    assert torch.allclose(predicted, net.mean_rating + dot)  # the biases start at zero


def composed(tmp_path, ratings_folder, *overrides: str):
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"data.path={ratings_folder}",
                "~logger",
                f"paths.output_dir={tmp_path}",
                f"paths.data_dir={tmp_path}",
                f"paths.root_dir={tmp_path}",
                "model.compile=false",
                *overrides,
            ],
        )


def test_a_rating_only_model_trains_its_head_at_weight_one(tmp_path, ratings_folder):
    """Its penalty (``model.embedding_l2``) was chosen against the whole rating loss: under
    the default fixed weighting its head's weight is 1, not the two-task study's λR = 0.01."""
    from pathlib import Path

    from hydra.utils import instantiate

    from mtrec.mtl.tasks import Rating
    from mtrec.reference_keys import apply_reference_keys

    models = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*"))
    rating_only = []
    for name in models:
        cfg = composed(tmp_path, ratings_folder, f"model={name}")
        if list(cfg.tasks) != ["rating"]:
            continue
        apply_reference_keys(cfg)
        strategy = instantiate(cfg.weighting)
        strategy.bind([Rating()])
        assert strategy.loss_weights(torch.ones(1)) == [1.0], name
        rating_only.append(name)
    assert len(rating_only) == 7  # mf, biased_mf, biased_dot, dense, genre_*, sequence_lstm


def test_popularity_run_stops_after_one_epoch_with_its_ranking_metrics(ratings_folder, tmp_path):
    cfg = composed(tmp_path, ratings_folder, "model=popularity", "trainer.max_epochs=5")
    metrics = train(cfg)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [entry["epoch"] for entry in history] == [1]  # nothing to train: one evaluation
    assert 0 < metrics["test/mrr"] < 1 and "test/mse" not in metrics


class EvaluationReads(L.Callback):
    """Records every evaluation: whether test metrics were visible during fitting, and how
    often the test loop ran."""

    def __init__(self):
        self.test_metrics_while_fitting, self.test_runs = [], 0

    def on_validation_end(self, trainer, module):
        if trainer.state.fn == "fit":
            names = [name for name in trainer.callback_metrics if name.startswith("test/")]
            self.test_metrics_while_fitting += names

    def on_test_start(self, trainer, module):
        self.test_runs += 1


@pytest.mark.parametrize("experiment", ["beyond", "best"])
def test_selection_reads_validation_only_and_tests_the_best_epoch_once(
    ratings_folder, tmp_path, experiment
):
    cfg = composed(
        tmp_path,
        ratings_folder,
        f"experiment={experiment}",
        "hydra.mode=RUN",
        "data.split_seed=0",
        "data.val_fraction=0.2",
        "trainer.max_epochs=6",
        "optimizer.lr=0.02",
        "model.net.embedding_dim=8",
        "model.net.layer_sizes=[24,8]",
    )
    reads = EvaluationReads()
    metrics = train(cfg, extra_callbacks=[reads])
    assert reads.test_metrics_while_fitting == [] and reads.test_runs == 1
    record = json.loads((tmp_path / "metrics.json").read_text())
    during_fit = [entry for entry in record["history"] if "val/combined" in entry]
    assert len(during_fit) == 6
    best = max(during_fit, key=lambda entry: entry["val/combined"])
    selected = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert selected["epoch"] + 1 == best["epoch"]
    # the reported validation metrics are the selected epoch's, and the criterion is as defined
    assert metrics["val/combined"] == pytest.approx(best["val/combined"], rel=1e-5)
    assert record["final"]["val/combined"] == pytest.approx(best["val/combined"], rel=1e-5)
    assert record["final"]["test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-6)
    expected = min(metrics["val/mrr_interaction"] / 0.130, 0.880 / metrics["val/rmse"])
    assert metrics["val/combined"] == pytest.approx(expected, rel=1e-5)
    # a selection setting, not a metric of the run: nothing like it among the test metrics
    assert not [name for name in record["final"] if name.startswith("test/combined")]
