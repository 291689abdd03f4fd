"""Seconds per epoch of ML-100K training: a plain PyTorch loop next to the template.

Both train the default recipe (MultiTaskNet, shared embeddings, weights 0.99 / 0.01, batch 256,
one negative, Adam 1e-3) and evaluate the held-out 5 % after every epoch, on one thread.

- plain loop: the reference style: numpy shuffles and negatives, tensors made per batch,
  ``loss.item()`` every step, plain Adam.
- template: the real Lightning Trainer built from the Hydra config (``mtrec-train``'s code),
  checkpoints, metrics.json and TensorBoard included.

    python benchmarks/epoch_time.py [--epochs 5] [override ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module

from mtrec import losses
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.metrics import evaluate
from mtrec.models import MultiTaskNet
from mtrec.train import train


def plain_loop(epochs: int, data_dir: str) -> list[float]:
    dm = MovieLensDataModule(cache_dir=data_dir)
    dm.setup()
    train_split, held = dm.split.train, next(iter(dm.val_dataloader()))
    users, items, ratings = (
        t.numpy() for t in (train_split.users, train_split.items, train_split.ratings)
    )
    net = MultiTaskNet(dm.num_users, dm.num_items)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.RandomState(0)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = np.arange(len(users))
        rng.shuffle(order)
        for begin in range(0, len(order), 256):
            rows = order[begin : begin + 256]
            u = torch.from_numpy(users[rows])
            i = torch.from_numpy(items[rows])
            r = torch.from_numpy(ratings[rows])
            negatives = torch.from_numpy(rng.randint(0, dm.num_items, len(rows)))
            positive, predicted = net(u, i)
            negative = net.interaction_logits(u, negatives)
            loss = 0.99 * losses.bounded_bpr(positive, negative.unsqueeze(-1))
            loss = loss + 0.01 * losses.regression_loss(predicted, r)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        evaluate(net, held)
        seconds.append(time.perf_counter() - start)
    return seconds


def evaluation_ms(data_dir: str, repeats: int = 20) -> float:
    """Median milliseconds of one all-user evaluation of the held-out 5 % (all metrics)."""
    dm = MovieLensDataModule(cache_dir=data_dir)
    dm.setup()
    net, held = MultiTaskNet(dm.num_users, dm.num_items), next(iter(dm.val_dataloader()))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(net, held)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


class EpochTimer(L.Callback):
    """Wall time from one training epoch's start to the next's: training plus evaluation."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, module):
        self.starts.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return list(np.diff(self.starts))


def template(epochs: int, data_dir: str, overrides: list[str]) -> list[float]:
    timer = EpochTimer()
    with (
        tempfile.TemporaryDirectory() as out,
        initialize_config_module("mtrec.conf", version_base="1.3"),
    ):
        cfg = compose(
            "train",
            overrides=[
                f"trainer.max_epochs={epochs}",
                f"paths.root_dir={out}",
                f"paths.output_dir={out}",
                f"paths.data_dir={data_dir}",
                *overrides,
            ],
        )
        train(cfg, extra_callbacks=[timer])
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the template run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain = plain_loop(args.epochs, args.data_dir)
    ours = template(args.epochs, args.data_dir, args.overrides)
    # the first epoch pays one-off costs (allocation, lazy initialisation): report the rest
    plain_s, ours_s = float(np.median(plain[1:])), float(np.median(ours[1:]))
    print(
        f"\nML-100K, batch 256, {args.epochs} epochs (median of epochs 2..{args.epochs}), 1 thread"
    )
    print(f"{'loop':<42}{'s / epoch':>10}")
    print(f"{'plain PyTorch loop (reference style)':<42}{plain_s:>10.3f}")
    print(f"{'template (Lightning Trainer, Hydra config)':<42}{ours_s:>10.3f}")
    print(f"{'ratio template / plain':<42}{ours_s / plain_s:>10.2f}")
    print(f"{'all-user evaluation (ms, median of 20)':<42}{evaluation_ms(args.data_dir):>10.1f}")


if __name__ == "__main__":
    main()
