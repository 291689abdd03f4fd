import math

import pytest
import torch

from mtrec.mtl import losses

POSITIVE = torch.tensor([2.0, -1.0])
NEGATIVE = torch.tensor([[0.5, 3.0], [-1.0, -4.0]])  # two negatives per positive
DIFFS = [1.5, -1.0, 0.0, 3.0]  # p+ - p- for each (positive, negative) pair


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bounded_bpr", sum(1 - sigmoid(d) for d in DIFFS) / 4),
        ("bpr", sum(-math.log(sigmoid(d)) for d in DIFFS) / 4),
        ("hinge", sum(max(0.0, 1 - d) for d in DIFFS) / 4),
        ("adaptive_hinge", (max(0.0, 1 - (2.0 - 3.0)) + max(0.0, 1 - (-1.0 - -1.0))) / 2),
        (
            "bce",
            (-math.log(sigmoid(2.0)) - math.log(sigmoid(-1.0))) / 2
            + sum(-math.log(1 - sigmoid(n)) for n in (0.5, 3.0, -1.0, -4.0)) / 4,
        ),
    ],
)
def test_factorization_losses_match_hand_computation(name, expected):
    value = losses.factorization_loss(name)(POSITIVE, NEGATIVE)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_mean_squared_error():
    value = losses.regression_loss(torch.tensor([1.0, 4.0, 2.5]), torch.tensor([2.0, 4.0, 5.0]))
    assert value.item() == pytest.approx((1 + 0 + 6.25) / 3)


def test_penalty_matches_hand_computation():
    weights = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5], [-3.0]])]
    value = losses.penalty(weights, l1=0.1, l2=0.01)
    assert float(value) == pytest.approx(0.1 * (1 + 2 + 0.5 + 3) + 0.01 * (1 + 4 + 0.25 + 9))
    assert losses.penalty(weights) == 0.0


def test_unknown_loss_names_the_choices():
    with pytest.raises(
        ValueError,
        match="model.factorization_loss=pointwise is not valid: use one of bounded_bpr, bpr",
    ):
        losses.factorization_loss("pointwise")
