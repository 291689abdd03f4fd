"""Effective rank and information abundance against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from mtrec.mtl.collapse import collapse, effective_rank, information_abundance


def test_a_rank_one_matrix_has_effective_rank_and_abundance_one():
    vectors = torch.outer(torch.arange(1.0, 8.0), torch.tensor([2.0, -1.0, 0.5, 3.0]))
    assert effective_rank(vectors).item() == pytest.approx(1.0, abs=1e-6)
    assert information_abundance(vectors).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("d", [2, 5, 16])
def test_orthogonal_columns_of_equal_norm_give_d(d):
    q, _ = torch.linalg.qr(torch.randn(40, d, generator=torch.Generator().manual_seed(d)))
    vectors = 3.0 * q  # d orthogonal columns, each of norm 3
    assert effective_rank(vectors).item() == pytest.approx(d, rel=1e-6)
    assert information_abundance(vectors).item() == pytest.approx(d, rel=1e-6)


def test_two_singular_values_by_hand():
    # singular values 3 and 1: p = (3/4, 1/4), entropy 0.5623..., abundance (3 + 1) / 3
    vectors = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(vectors).item() == pytest.approx(math.exp(entropy), rel=1e-9)
    assert information_abundance(vectors).item() == pytest.approx(4 / 3, rel=1e-9)


def test_fewer_rows_than_columns_and_zeros():
    wide = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert effective_rank(wide).item() == pytest.approx(2.0, rel=1e-9)
    assert effective_rank(torch.zeros(5, 3)).item() == 0.0
    assert information_abundance(torch.zeros(5, 3)).item() == 0.0


def test_collapse_names_each_side_and_task():
    found = collapse({("user", "interaction"): torch.eye(3), ("item", "rating"): torch.ones(4, 2)})
    assert set(found) == {
        "effective_rank/user/interaction",
        "abundance/user/interaction",
        "effective_rank/item/rating",
        "abundance/item/rating",
    }
    assert found["effective_rank/user/interaction"].item() == pytest.approx(3.0)
    assert found["abundance/item/rating"].item() == pytest.approx(1.0)
