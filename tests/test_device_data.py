"""Training data stay on the training device: copied there once, not once per batch."""

from __future__ import annotations

import torch

from mtrec.data.datamodule import MovieLensDataModule


class FakeTrainer:
    """What the data module reads of a Trainer: the device, rank and step boundaries."""

    def __init__(self, device: str):
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()
        self.global_rank, self.world_size = 0, 1
        self.global_step, self.max_steps, self.checkpoint_callbacks = 0, -1, []


def test_training_and_held_out_tensors_are_placed_once(ratings_folder):
    """On the ``meta`` device (shapes only, on any machine): the data loaders' tensors must be
    copies made there, since the split's own tensors stay on the CPU."""
    dm = MovieLensDataModule(path=str(ratings_folder), batch_size=16)
    dm.setup()
    dm.trainer = FakeTrainer("meta")
    first, second = dm.train_dataloader(), dm.train_dataloader()
    assert first.batches.data is not dm.split.train  # a copy on the device ...
    assert first.batches.data is second.batches.data  # ... made once, then reused
    held = next(iter(dm.val_dataloader()))
    assert held is next(iter(dm.val_dataloader()))
    assert held.users.device.type == "meta" and held.seen_items.device.type == "meta"
    batch = next(iter(first))[0]
    assert {name: t.device.type for name, t in batch.items()} == dict.fromkeys(batch, "meta")
    assert dm.split.train.users.device.type == "cpu"  # the split itself is left where it was


def test_batches_are_the_same_wherever_the_data_live(ratings_folder):
    """The order and negatives come from the seeded CPU generator, whatever the device."""
    dm = MovieLensDataModule(path=str(ratings_folder), batch_size=16)
    dm.setup()
    plain = [b for chunk in dm.train_dataloader() for b in chunk]
    dm.trainer = FakeTrainer("cpu")
    placed = [b for chunk in dm.train_dataloader() for b in chunk]
    for a, b in zip(plain, placed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
