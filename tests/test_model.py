import pytest
import torch

from conftest import multitask_net
from mtrec.data.info import DataInfo


@pytest.mark.parametrize("sharing", [True, False])
def test_forward_shapes(sharing):
    net = multitask_net(
        DataInfo(50, 70), embedding_dim=8, layer_sizes=(24, 16), embedding_sharing=sharing
    )
    users, items = torch.randint(0, 50, (13,)), torch.randint(0, 70, (13,))
    logits, ratings = net(users, items)
    assert logits.shape == (13,) and ratings.shape == (13,)
    assert net.head("interaction")(users.unsqueeze(-1), torch.randint(0, 70, (13, 4))).shape == (
        13,
        4,
    )
    assert net.score_all_items(users).shape == (13, 70)


def test_score_all_items_matches_pairwise_logits():
    net = multitask_net(DataInfo(20, 30), embedding_dim=4, layer_sizes=(12, 8))
    torch.nn.init.normal_(net.heads["interaction"].item_biases.weight)
    users = torch.arange(20)
    all_scores = net.score_all_items(users)
    pairs = net.head("interaction")(users.unsqueeze(1), torch.arange(30).unsqueeze(0))
    torch.testing.assert_close(all_scores, pairs)


def test_initial_statistics():
    torch.manual_seed(0)
    net = multitask_net(DataInfo(2000, 3000), embedding_dim=32)
    for table in (net.mixer.table("user", "interaction"), net.mixer.table("item", "interaction")):
        assert abs(table.weight.mean().item()) < 1e-3
        assert table.weight.std().item() == pytest.approx(1 / 32, rel=0.02)
    assert torch.count_nonzero(net.heads["interaction"].item_biases.weight) == 0
    assert [m.in_features for m in net.heads["rating"].mlp if isinstance(m, torch.nn.Linear)] == [
        96,
        64,
    ]


def test_sharing_controls_the_embedding_tables():
    shared = multitask_net(
        DataInfo(10, 12), embedding_dim=4, layer_sizes=(12, 8), embedding_sharing=True
    )
    separate = multitask_net(
        DataInfo(10, 12), embedding_dim=4, layer_sizes=(12, 8), embedding_sharing=False
    )
    assert shared.mixer.table("user", "rating") is shared.mixer.table("user", "interaction")
    assert separate.mixer.table("item", "rating") is not separate.mixer.table("item", "interaction")
    extra = 10 * 4 + 12 * 4
    assert (
        sum(p.numel() for p in separate.parameters())
        == sum(p.numel() for p in shared.parameters()) + extra
    )


def test_separate_heads_do_not_share_gradients():
    net = multitask_net(
        DataInfo(10, 12), embedding_dim=4, layer_sizes=(12, 8), embedding_sharing=False
    )
    _, ratings = net(torch.tensor([1, 2]), torch.tensor([3, 4]))
    ratings.sum().backward()
    assert net.mixer.table("user", "interaction").weight.grad is None
    assert net.mixer.table("user", "rating").weight.grad.abs().sum() > 0


def test_layer_sizes_must_match_embedding_dim():
    with pytest.raises(
        ValueError, match=r"layer_sizes=\[64,32\] does not fit model.net.embedding_dim=32"
    ):
        multitask_net(DataInfo(10, 10), embedding_dim=32, layer_sizes=(64, 32))


def train_rows(pairs, ratings, num_users, num_items):
    from mtrec.data.interactions import Interactions

    users, items = (torch.tensor(column) for column in zip(*pairs, strict=True))
    timestamps = torch.zeros(len(pairs), dtype=torch.long)
    return Interactions(users, items, torch.tensor(ratings), timestamps, num_users, num_items)


def test_the_dot_score_head_is_biased_matrix_factorization_by_hand():
    """``score_head=dot``: r = mu + b_u + b_i + u . q, mu the training mean (here 3)."""
    train = train_rows([(0, 0), (1, 1), (1, 0)], [2.0, 4.0, 3.0], num_users=2, num_items=2)
    net = multitask_net(DataInfo(2, 2, None, train), 2, (6, 4), score_head="dot")
    with torch.no_grad():
        net.mixer.table("user", "interaction").weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        net.mixer.table("item", "interaction").weight.copy_(torch.tensor([[3.0, -1.0], [2.0, 0.5]]))
        net.heads["rating"].user_biases.weight.copy_(torch.tensor([[0.5], [-0.25]]))
        net.heads["rating"].item_biases.weight.copy_(torch.tensor([[0.1], [0.2]]))
    ratings = net.head("rating")(torch.tensor([0, 1]), torch.tensor([1, 0]))
    # user 0, item 1: 3 + 0.5 + 0.2 + (1 * 2 + 2 * 0.5); user 1, item 0: 3 - 0.25 + 0.1 - 1
    torch.testing.assert_close(ratings, torch.tensor([6.7, 1.85]))
    assert not any("mlp" in name for name, _ in net.named_parameters())  # no MLP for it
    rated = net.tables_read()["rating"]  # its biases are read at the batch's ids
    assert net.heads["rating"].user_biases in rated["user"]
    assert net.heads["rating"].item_biases in rated["item"]


def test_the_dot_score_head_reads_the_history_term_under_svdpp():
    """With ``encoder=history`` the user vector is p_u + |N(u)|^-1/2 sum y_j: SVD++."""
    train = train_rows([(0, 0), (0, 1)], [4.0, 2.0], num_users=1, num_items=2)
    net = multitask_net(DataInfo(1, 2, None, train), 2, (6, 4), score_head="dot", encoder="history")
    with torch.no_grad():
        net.mixer.table("user", "interaction").weight.zero_()
        net.mixer.table("item", "interaction").weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        history = net.mixer.histories["interaction"].items.weight
        history.copy_(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    # user 0 rated both items: its vector is (y_0 + y_1) / sqrt(2) = (2, 4) / sqrt(2); mu = 3
    expected = 3 + torch.tensor([2.0, 4.0]) / 2**0.5
    torch.testing.assert_close(
        net.head("rating")(torch.tensor([0, 0]), torch.tensor([0, 1])), expected
    )


def test_a_bad_score_head_is_named():
    from mtrec.errors import ConfigError

    with pytest.raises(ConfigError, match="model.net.score_head=svd is not valid: use mlp"):
        multitask_net(DataInfo(2, 2), 2, (6, 4), score_head="svd")
