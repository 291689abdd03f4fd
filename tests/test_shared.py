"""What the tasks share: each task's copy, and the combined gradient sent back."""

from __future__ import annotations

import torch
from torch import nn

from mtrec.models.protocol import TableRows
from mtrec.mtl.shared import TaskCopies


def test_table_rows_send_what_the_embedding_backward_gives():
    torch.manual_seed(0)
    table = nn.Embedding(6, 3)
    ids = torch.tensor([[1, 4], [1, 0]])  # a repeated row adds up
    gradient = torch.randn(2, 2, 3)
    (table(ids) * gradient).sum().backward()
    expected = table.weight.grad.clone()
    table.weight.grad = None
    TableRows(table, ids).send(gradient)
    torch.testing.assert_close(table.weight.grad, expected)
    TableRows(table, ids).send(gradient)  # onto a gradient already there: added
    torch.testing.assert_close(table.weight.grad, 2 * expected)
    assert table.weight.grad[[2, 3, 5]].abs().sum() == 0  # rows the batch did not read


def test_the_padding_row_gets_no_gradient():
    table = nn.Embedding(4, 2, padding_idx=0)
    TableRows(table, torch.tensor([0, 2, 0])).send(torch.ones(3, 2))
    assert table.weight.grad[0].abs().sum() == 0
    assert table.weight.grad[2].tolist() == [1.0, 1.0]


def test_copies_receive_each_task_alone_and_send_back_through_any_shared_layer():
    torch.manual_seed(0)
    table, layer = nn.Embedding(5, 2), nn.Linear(2, 2)
    ids = torch.tensor([0, 3])
    shared = {"item": TableRows(table, ids), "bottom": layer(torch.ones(2, 2))}
    copies = TaskCopies(shared, ("interaction", "rating"))
    (3 * copies.copies["interaction"]["item"].sum()).backward()  # the rating head reads nothing
    (2 * copies.copies["rating"]["bottom"].sum()).backward()
    received = copies.received
    assert received.shape == (2, 8)
    assert received[0].tolist() == [3.0] * 4 + [0.0] * 4
    assert received[1].tolist() == [0.0] * 4 + [2.0] * 4
    copies.send(received.sum(0))
    assert table.weight.grad[ids].tolist() == [[3.0, 3.0], [3.0, 3.0]]
    # the layer's gradient from its output's: d/dW of sum(2 * (x W^T + b)) with x = ones
    torch.testing.assert_close(layer.weight.grad, torch.full((2, 2), 4.0))
    torch.testing.assert_close(layer.bias.grad, torch.full((2,), 4.0))
