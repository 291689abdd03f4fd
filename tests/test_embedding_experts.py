"""Mixtures of embedding tables, against hand computations on two-dimensional rows."""

from __future__ import annotations

import math

import pytest
import torch

from mtrec.models.embedding_experts import EmbeddingExperts

TASKS = ("interaction", "rating")


def with_gates(
    mixture: EmbeddingExperts, experts: list[float], logits: dict[str, list[float]] | None = None
) -> torch.Tensor:
    """One id's row: the experts' rows, then every gate's logits (zero unless given)."""
    row = list(experts)
    for name, columns in mixture.gate_columns.items():
        row += (logits or {}).get(name, [0.0] * (columns.stop - columns.start))
    assert len(row) == mixture.columns
    return torch.tensor([row], requires_grad=True)


def test_mmoe_of_tables_mixes_an_ids_rows_by_its_gate():
    mixture = EmbeddingExperts(2, shared=2, own=0, tasks=TASKS)
    # expert 0: (1, 2), expert 1: (5, -3); the interaction gate's logits (log 3, 0)
    rows = with_gates(mixture, [1.0, 2.0, 5.0, -3.0], {"interaction": [math.log(3.0), 0.0]})
    # shares 3/4 and 1/4: 0.75 * (1, 2) + 0.25 * (5, -3) = (2, 0.75)
    assert mixture.vector("interaction", rows)[0].tolist() == pytest.approx([2.0, 0.75])
    assert mixture.vector("rating", rows)[0].tolist() == pytest.approx([3.0, -0.5])
    assert mixture.shared(rows).tolist() == rows[:, :4].tolist()  # every table is shared
    assert mixture.gates(rows)["interaction"][0].tolist() == pytest.approx([0.75, 0.25])


def test_cgc_of_tables_reads_the_shared_tables_and_its_own_only():
    mixture = EmbeddingExperts(2, shared=1, own=1, tasks=TASKS)
    # shared (2, 0), interaction's own (0, 4), rating's own (10, 10)
    rows = with_gates(mixture, [2.0, 0.0, 0.0, 4.0, 10.0, 10.0])
    interaction = mixture.vector("interaction", rows)
    assert interaction[0].tolist() == pytest.approx([1.0, 2.0])  # mean of (2, 0) and (0, 4)
    interaction.sum().backward()
    assert rows.grad[0, 4:6].abs().sum() == 0  # rating's table: not read by interaction
    rating_gate = rows.grad[0, mixture.gate_columns["rating"]]
    assert (
        rating_gate.abs().sum() == 0
        and rows.grad[0, mixture.gate_columns["interaction"]].abs().sum() > 0
    )
    assert mixture.shared(rows).tolist() == [[2.0, 0.0]]


def test_stem_sees_every_table_but_sends_gradient_to_the_shared_and_its_own():
    """STEM (Su et al., AAAI 2024): the other task's table enters with its gradient stopped."""
    mixture = EmbeddingExperts(2, shared=1, own=1, tasks=TASKS, stop_gradient=True)
    rows = with_gates(mixture, [3.0, 0.0, 0.0, 3.0, 6.0, 6.0])
    interaction = mixture.vector("interaction", rows)
    assert interaction[0].tolist() == pytest.approx([3.0, 3.0])  # mean of the three rows
    interaction.sum().backward()
    received = rows.grad[0, :6].view(3, 2).abs().sum(-1)
    assert received[0] > 0 and received[1] > 0 and received[2] == 0


def test_ple_of_tables_routes_through_a_second_level_by_hand():
    mixture = EmbeddingExperts(1, shared=2, own=1, tasks=TASKS, levels=2)
    rows = with_gates(mixture, [0.0, 3.0, 6.0, 12.0])  # shared 0, 3; own: interaction 6, rating 12
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
    # the id's own level-1 logits (log 3, 0): 3/4 of the task's level-0 output, 1/4 shared
    rows = with_gates(mixture, [0.0, 3.0, 6.0, 12.0], {"level1/interaction": [math.log(3.0), 0]})
    assert mixture.vector("interaction", rows).item() == pytest.approx(0.75 * 3 + 0.25 * 5.25)


def test_a_tables_rows_start_as_separate_tables_with_even_gates():
    mixture = EmbeddingExperts(4, shared=2, own=1, tasks=TASKS, levels=3)
    # 4 expert rows of 4; gates: 3 + 3 + 4 at level 0, 2 + 2 + 3 at level 1, 2 + 2 at level 2
    assert mixture.columns == 4 * 4 + 10 + 7 + 4
    weight = torch.empty(5000, mixture.columns)
    mixture.reset_rows(weight)
    assert weight[:, 16:].abs().sum() == 0
    assert weight[:, :16].std().item() == pytest.approx(1 / 4, rel=0.05)


def test_stem_takes_one_level_of_gates():
    """A PLE level above mixes the tables' weights linearly: a gradient stopped at level 0
    for one task's path only has no such weights."""
    with pytest.raises(ValueError, match="one level"):
        EmbeddingExperts(2, shared=1, own=1, tasks=TASKS, levels=2, stop_gradient=True)
