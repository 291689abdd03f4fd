"""Mixtures of embedding tables, against hand computations on two-dimensional rows."""

from __future__ import annotations

import math

import pytest
import torch

from mtrec.models.embedding_experts import EmbeddingExperts

TASKS = ("interaction", "rating")


def gated(mixture: EmbeddingExperts, biases: dict[str, list[float]]) -> EmbeddingExperts:
    """Gates that ignore the rows: their shares are the softmax of the given biases."""
    with torch.no_grad():
        for name, gate in mixture.gate_layers.items():
            gate.weight.zero_()
            gate.bias.copy_(torch.tensor(biases.get(name, [0.0] * gate.out_features)))
        for layer in [
            *mixture.shared_gates,
            *(g for level in mixture.level_gates for g in level.values()),
        ]:
            layer.weight.zero_()
            layer.bias.zero_()
    return mixture


def test_mmoe_of_tables_mixes_an_ids_rows_by_its_gate():
    mixture = gated(
        EmbeddingExperts(2, shared=2, own=0, tasks=TASKS),
        {"interaction": [math.log(3.0), 0.0], "rating": [0.0, 0.0]},
    )
    rows = torch.tensor([[1.0, 2.0, 5.0, -3.0]])  # expert 0: (1, 2), expert 1: (5, -3)
    # shares 3/4 and 1/4: 0.75 * (1, 2) + 0.25 * (5, -3) = (2, 0.75)
    assert mixture.vector("interaction", rows)[0].tolist() == pytest.approx([2.0, 0.75])
    assert mixture.vector("rating", rows)[0].tolist() == pytest.approx([3.0, -0.5])
    assert mixture.shared(rows).tolist() == rows.tolist()  # every table is shared


def test_cgc_of_tables_reads_the_shared_tables_and_its_own_only():
    mixture = gated(EmbeddingExperts(2, shared=1, own=1, tasks=TASKS), {})
    # shared (2, 0), interaction's own (0, 4), rating's own (10, 10)
    rows = torch.tensor([[2.0, 0.0, 0.0, 4.0, 10.0, 10.0]], requires_grad=True)
    interaction = mixture.vector("interaction", rows)
    assert interaction[0].tolist() == pytest.approx([1.0, 2.0])  # mean of (2, 0) and (0, 4)
    interaction.sum().backward()
    assert rows.grad[0, 4:].abs().sum() == 0  # rating's table: not read by interaction
    assert mixture.shared(rows).tolist() == [[2.0, 0.0]]


def test_stem_sees_every_table_but_sends_gradient_to_the_shared_and_its_own():
    """STEM (Su et al., AAAI 2024): the other task's table enters with its gradient stopped."""
    mixture = gated(EmbeddingExperts(2, shared=1, own=1, tasks=TASKS, stop_gradient=True), {})
    rows = torch.tensor([[3.0, 0.0, 0.0, 3.0, 6.0, 6.0]], requires_grad=True)
    interaction = mixture.vector("interaction", rows)
    assert interaction[0].tolist() == pytest.approx([3.0, 3.0])  # mean of the three rows
    interaction.sum().backward()
    received = rows.grad[0].view(3, 2).abs().sum(-1)
    assert received[0] > 0 and received[1] > 0 and received[2] == 0


def test_ple_of_tables_routes_through_a_second_level_by_hand():
    mixture = gated(EmbeddingExperts(1, shared=2, own=1, tasks=TASKS, levels=2), {})
    rows = torch.tensor([[0.0, 3.0, 6.0, 12.0]])  # shared 0 and 3; own: interaction 6, rating 12
    # level 0 (uniform gates): interaction (0 + 3 + 6) / 3 = 3, rating (0 + 3 + 12) / 3 = 5,
    # shared gate over all four: 21 / 4 = 5.25; level 1: the mean of the task's and the shared
    assert mixture.vector("interaction", rows).item() == pytest.approx((3 + 5.25) / 2)
    assert mixture.vector("rating", rows).item() == pytest.approx((5 + 5.25) / 2)
    assert set(mixture.gates(rows)) == {
        "level0/interaction",
        "level0/rating",
        "level0/shared",
        "level1/interaction",
        "level1/rating",
    }
