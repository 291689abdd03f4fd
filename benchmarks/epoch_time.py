"""Seconds per epoch, evaluation time and peak memory: the scale table and the template's overhead.

``make bench`` prints two tables, each row measured in its own process (so its peak resident
memory is its own):

- scale: the template (the real Lightning Trainer built from the Hydra config, as
  ``mtrec-train`` runs it, checkpoints, metrics.json and TensorBoard included) on each shape
  and recipe of ``SCALE_ROWS``: ML-100K with dense Adam (the default recipe) and with sparse
  row updates, ML-1M with both recipes, the ML-25M and ML-32M shapes with ``experiment=large``.
  Seconds of one training epoch, of one full evaluation (every held-out user against every
  item) and the peak resident memory. ML-100K is the real data set; the other shapes are
  ``data=synthetic``.
- overhead (``--shapes``, default ML-100K): the default recipe as a plain PyTorch loop in the
  reference style (numpy shuffles and negatives, tensors made per batch, ``loss.item()``
  every step, plain Adam) next to the template, one thread.

Figures are medians over epochs 2.. (the first pays one-off costs: compiling, allocation).
With ``--steps N`` each epoch stops after N batches and seconds per epoch are projected from
the measured time per batch (marked ``*``).

``--compile [modes]`` adds one ML-100K row per ``model.compile`` mode (``step`` without
names), relative to ``loss`` (the step's parts apart, the path before the compiled step);
``--weightings [names]`` adds one ML-100K row per loss-weighting strategy (all without names),
each relative to ``weighting=fixed``; ``--sharings [names]`` one per sharing architecture,
relative to ``model.net.sharing=shared``; ``--losses [names]`` one per interaction loss,
relative to ``bounded_bpr``; ``--encoders [names]`` one per encoder on ML-100K and on the
ML-1M shape, relative to ``id``; ``--item-to-item`` one with the item-to-item term, relative
to none (``model.net.item_to_item_learned=false`` among the overrides: its constant form).
A row and its baseline run in two processes whose epochs take turns (baseline, row,
baseline, ...): a shared host's speed drifts by tens of percent between processes run one
after the other, far less between neighbouring epochs.
``--repeats N`` measures N such pairs and shows the one of median ratio, with the range of
the N ratios.

    python benchmarks/epoch_time.py [--scale ml-100k/dense ...] [--shapes ml-100k ml-1m]
        [--epochs 2] [--steps N] [--compile [step false]] [--weightings [fixed pcgrad ...]]
        [--sharings [mmoe ...]] [--losses [softmax ...]] [--encoders [history]]
        [--item-to-item] [--repeats 3]
        [override ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from mtrec.models import MultiTaskNet
from mtrec.models.encoders import ENCODERS
from mtrec.models.mixers import SHARINGS
from mtrec.mtl import losses
from mtrec.mtl.evaluation import evaluate
from mtrec.mtl.tasks import reference_tasks
from mtrec.train import train

# (shape, recipe name, overrides): the rows of the scale table
SCALE_ROWS = [
    ("ml-100k", "dense", []),
    ("ml-100k", "sparse", ["model.sparse_rows=true"]),
    ("ml-1m", "dense", []),
    ("ml-1m", "large", ["experiment=large"]),
    ("ml-25m", "large", ["experiment=large"]),
    ("ml-32m", "large", ["experiment=large"]),
]
WEIGHTINGS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "weighting").glob("*.yaml")
)


def data_module(shape: str, data_dir: str):
    from mtrec.data.datamodule import MovieLensDataModule
    from mtrec.data.synthetic import SyntheticDataModule

    if shape == "ml-100k":
        return MovieLensDataModule(cache_dir=data_dir)
    return SyntheticDataModule(shape=shape, cache_dir=data_dir)


def data_overrides(shape: str) -> list[str]:
    """The data of ``shape``: the real ML-100K, otherwise ``data=synthetic`` of that shape."""
    if shape == "ml-100k":
        return ["data=movielens", "data.variant=ml-100k"]
    return ["data=synthetic", f"data.variant={shape}"]


def plain_loop(shape: str, epochs: int, steps: int | None, data_dir: str) -> dict:
    dm = data_module(shape, data_dir)
    dm.setup()
    train_split, held = dm.split.train, next(iter(dm.val_dataloader()))
    users, items, ratings = (
        t.numpy() for t in (train_split.users, train_split.items, train_split.ratings)
    )
    tasks = reference_tasks()
    net = MultiTaskNet(dm.data_info(), tasks=tasks)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.RandomState(0)
    batches_per_epoch = math.ceil(len(users) / 256)
    train_seconds, eval_seconds = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        order = np.arange(len(users))
        rng.shuffle(order)
        for begin in range(0, min(len(order), 256 * (steps or batches_per_epoch)), 256):
            rows = order[begin : begin + 256]
            u = torch.from_numpy(users[rows])
            i = torch.from_numpy(items[rows])
            r = torch.from_numpy(ratings[rows])
            negatives = torch.from_numpy(rng.randint(0, dm.num_items, len(rows)))
            positive, predicted = net(u, i)
            negative = net.head(tasks[0].name)(u, negatives)
            loss = 0.99 * losses.bounded_bpr(positive, negative.unsqueeze(-1))
            loss = loss + 0.01 * losses.regression_loss(predicted, r)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        middle = time.perf_counter()
        evaluate(net, held, tasks=tasks)
        train_seconds.append(middle - start)
        eval_seconds.append(time.perf_counter() - middle)
    return epoch_figures(train_seconds, eval_seconds, steps, batches_per_epoch)


class PhaseTimer(L.Callback):
    """Wall time of each epoch's training phase and of its evaluation (validation loop).

    ``turns`` (two file descriptors): each epoch waits for a byte on the first before it
    starts and writes one to the second when it ends, so that the parent can run the epochs
    of two processes in turn (:func:`measure_pair`)."""

    def __init__(self, turns: tuple[int, int] | None = None):
        self.train_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.turns = turns

    def on_fit_start(self, trainer, module):
        data = trainer.datamodule
        self.batches_per_epoch = math.ceil(len(data.split.train) / data.hparams.batch_size)

    def on_train_epoch_start(self, trainer, module):
        if self.turns:
            os.read(self.turns[0], 1)  # this process's turn
        self.start = time.perf_counter()

    def on_validation_start(self, trainer, module):
        self.middle = time.perf_counter()
        self.train_seconds.append(self.middle - self.start)

    def on_train_epoch_end(self, trainer, module):  # after validation, checkpoints and logs
        self.eval_seconds.append(time.perf_counter() - self.middle)
        if self.turns:
            os.write(self.turns[1], b"x")  # the other process's turn


def template(
    shape: str, epochs: int, steps: int | None, data_dir: str, overrides, turns=None
) -> dict:
    timer = PhaseTimer(turns)
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
                "callbacks.progress_bar.refresh_rate=0",
                *data_overrides(shape),
                *overrides,
            ],
        )
        if steps:  # whole chunks only
            chunks = max(1, steps // cfg.data.batches_per_chunk)
            with open_dict(cfg):
                cfg.trainer.limit_train_batches = chunks
            steps = chunks * cfg.data.batches_per_chunk
        train(cfg, extra_callbacks=[timer])
        recipe = {"batch": cfg.data.batch_size, "threads": cfg.threads}
    figures = epoch_figures(timer.train_seconds, timer.eval_seconds, steps, timer.batches_per_epoch)
    return figures | recipe | {"steps": timer.batches_per_epoch}


def epoch_figures(train_seconds, eval_seconds, steps, batches_per_epoch) -> dict:
    """Medians over epochs 2.. (the first pays one-off costs: allocation, compiling)."""
    train_s = float(np.median(train_seconds[1:] or train_seconds))
    eval_s = float(np.median(eval_seconds[1:] or eval_seconds))
    projected = bool(steps) and steps < batches_per_epoch
    if projected:
        train_s *= batches_per_epoch / steps
    return {
        "seconds_per_epoch": train_s + eval_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "eval_ms": 1000 * eval_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "projected": projected,
    }


def row_command(
    loop: str, shape: str, args, extra: tuple[str, ...] = (), options: tuple[str, ...] = ()
) -> list[str]:
    """The command that measures one row in a process of its own (``--row``): ``options``
    before the Hydra overrides, ``extra`` overrides after the command line's."""
    command = [sys.executable, __file__, "--row", loop, "--shapes", shape, *options]
    command += ["--epochs", str(args.epochs), "--data-dir", args.data_dir]
    command += ["--steps", str(args.steps)] if args.steps else []
    return command + args.overrides + list(extra)


def measure_in_subprocess(loop: str, shape: str, args, extra: tuple[str, ...] = ()) -> dict:
    result = subprocess.run(row_command(loop, shape, args, extra), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{loop} on {shape} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_pair(shape: str, args, first: tuple[str, ...], second: tuple[str, ...]):
    """The template with ``first``'s and with ``second``'s overrides, each in its own process,
    their epochs run in turn (first, second, first, ...): this host's speed drifts by tens of
    percent over the seconds between two processes run one after the other, far less between
    neighbouring epochs. Both processes start (load, build) side by side; each epoch runs alone."""
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for index, extra in enumerate((first, second)):
            go_read, go_write = os.pipe()
            done_read, done_write = os.pipe()
            turns = ("--turns", f"{go_read},{done_write}")
            output = Path(folder) / f"{index}.out"
            with output.open("w") as out:
                process = subprocess.Popen(
                    row_command("template", shape, args, extra, turns),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    pass_fds=(go_read, done_write),
                )
            os.close(go_read)
            os.close(done_write)
            runs.append((process, go_write, done_read, output))
        for _ in range(args.epochs):
            for process, go, done, output in runs:
                os.write(go, b"x")
                if not os.read(done, 1):  # the process ended before its epoch did
                    _stop_if_failed(process, output)
        rows = []
        for process, go, done, output in runs:
            os.close(go)
            os.close(done)
            _stop_if_failed(process, output)
            rows.append(json.loads(output.read_text().strip().splitlines()[-1]))
    return rows


def _stop_if_failed(process: subprocess.Popen, output: Path) -> None:
    if process.wait() != 0:
        sys.exit(f"{' '.join(process.args[-3:])} failed:\n{output.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale",
        nargs="*",
        default=[f"{shape}/{recipe}" for shape, recipe, _ in SCALE_ROWS],
        help="rows of the scale table, as shape/recipe (none: skip the table)",
    )
    parser.add_argument(
        "--shapes", nargs="*", default=["ml-100k"], help="plain loop vs template, per shape"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, help="batches per epoch (projects the rest)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--row", choices=["plain", "template"], help="measure one loop only (JSON)")
    parser.add_argument("--turns", help=argparse.SUPPRESS)  # two pipes: epochs in turn
    parser.add_argument(
        "--compile", nargs="*", help="ML-100K rows per model.compile mode, against loss"
    )
    parser.add_argument(
        "--weightings", nargs="*", help="ML-100K rows per strategy (all without names)"
    )
    parser.add_argument(
        "--sharings", nargs="*", help="ML-100K rows per architecture (all without names)"
    )
    parser.add_argument("--losses", nargs="*", help="ML-100K rows per interaction loss")
    parser.add_argument("--encoders", nargs="*", help="ML-100K and ML-1M rows per encoder")
    parser.add_argument(
        "--item-to-item", action="store_true", help="an ML-100K row with the item-to-item term"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="pairs (baseline, variant) per row: the pair of median ratio is shown",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the template runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.row:  # one measurement, in this process: print it as JSON
        shape = args.shapes[0]
        if args.row == "plain":
            row = plain_loop(shape, args.epochs, args.steps, args.data_dir)
        else:
            turns = tuple(int(fd) for fd in args.turns.split(",")) if args.turns else None
            row = template(shape, args.epochs, args.steps, args.data_dir, args.overrides, turns)
        print(json.dumps(row))
        return
    note = "; * projected from --steps" if args.steps else ""
    if args.scale:
        scale_table(args, note)
    if args.shapes:
        overhead_table(args, note)
    if args.compile is not None:
        variant_rows(args, "model.compile", args.compile or ["step"], "loss")
    if args.weightings is not None:
        variant_rows(args, "weighting", args.weightings or WEIGHTINGS, "fixed")
    if args.sharings is not None:
        variant_rows(args, "model.net.sharing", args.sharings or list(SHARINGS), "shared")
    if args.losses is not None:
        names = args.losses or list(losses.FACTORIZATION_LOSSES)
        variant_rows(args, "model.factorization_loss", names, "bounded_bpr")
    if args.encoders is not None:
        encoders = args.encoders or list(ENCODERS)
        variant_rows(args, "model.net.encoder", encoders, "id", ("ml-100k", "ml-1m"))
    if args.item_to_item:
        variant_rows(args, "model.net.item_to_item", ["true"], "false")


def scale_table(args, note: str) -> None:
    """One template row per shape and recipe: training epoch, full evaluation, peak memory."""
    rows = {f"{shape}/{recipe}": (shape, recipe, extra) for shape, recipe, extra in SCALE_ROWS}
    unknown = [name for name in args.scale if name not in rows]
    if unknown:
        sys.exit(f"--scale {' '.join(unknown)}: unknown rows; known: {' '.join(rows)}")
    print(f"scale: the template, median of epochs 2..{args.epochs}{note}")
    header = f"{'shape':<10}{'recipe':<8}{'batch':>7}{'threads':>8}{'steps':>8}"
    print(header + f"{'train s':>10}{'eval s':>9}{'peak GiB':>9}", flush=True)
    for name in args.scale:
        shape, recipe, extra = rows[name]
        row = measure_in_subprocess("template", shape, args, tuple(extra))
        seconds = f"{row['train_s']:.2f}{'*' if row['projected'] else ' '}"
        print(
            f"{shape:<10}{recipe:<8}{row['batch']:>7}{row['threads']:>8}{row['steps']:>8}"
            f"{seconds:>10}{row['eval_s']:>9.2f}{row['peak_rss_gb']:>9.2f}",
            flush=True,
        )


def overhead_table(args, note: str) -> None:
    """The plain loop and the template on the default recipe, seconds per epoch with
    evaluation, and their ratio."""
    print(
        f"\noverhead: default recipe, batch 256, 1 thread, median of epochs 2..{args.epochs}{note}"
    )
    header = f"{'shape':<10}{'loop':<10}{'s / epoch':>11}{'ratio':>7}{'eval ms':>9}{'peak GiB':>9}"
    print(header, flush=True)
    for shape in args.shapes:
        plain = None
        for loop in ("plain", "template"):  # each row printed as soon as it is measured
            row = measure_in_subprocess(loop, shape, args)
            plain = plain or row
            seconds = f"{row['seconds_per_epoch']:.3f}{'*' if row['projected'] else ' '}"
            ratio = row["seconds_per_epoch"] / plain["seconds_per_epoch"]
            print(
                f"{shape:<10}{loop:<10}{seconds:>11}{ratio:>7.2f}"
                f"{row['eval_ms']:>9.1f}{row['peak_rss_gb']:>9.2f}",
                flush=True,
            )


def variant_rows(args, key: str, names: list[str], baseline: str, shapes=("ml-100k",)) -> None:
    """One template row per value of ``key`` and shape, relative to ``baseline``'s, the two
    measured with their epochs in turn (:func:`measure_pair`; the baseline's figures printed
    beside): the training epoch and the evaluation each against the baseline's. With
    ``--repeats N``, N such pairs, the one of median training ratio shown with the range of
    the N ratios."""
    title = key.rsplit(".", 1)[-1]
    width = max(14, len(title) + 1, *(len(n) + 1 for n in names))
    column = max(13, len(baseline) + 5)  # the baseline's figures
    header = f"{'shape':<9}{'train s':>9}{baseline + ' s':>{column}}{'ratio':>7}"
    header += f"{'eval ms':>9}{baseline + ' ms':>{column}}{'ratio':>7}"
    print(f"\n{title:<{width}}{header}", flush=True)
    for shape in shapes:
        for name in [n for n in names if n != baseline]:
            pairs = [  # each pair's epochs in turn
                measure_pair(shape, args, (f"{key}={baseline}",), (f"{key}={name}",))
                for _ in range(args.repeats)
            ]
            # the pair of median training ratio, with the spread of the ratios beside it
            ratios = sorted(row["train_s"] / reference["train_s"] for reference, row in pairs)
            pairs.sort(key=lambda pair: pair[1]["train_s"] / pair[0]["train_s"])
            reference, row = pairs[(len(pairs) - 1) // 2]
            train_ratio = ratios[(len(pairs) - 1) // 2]
            eval_ratio = row["eval_ms"] / reference["eval_ms"]
            star = "*" if row["projected"] else " "
            spread = f"  ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            print(
                f"{name:<{width}}{shape:<9}{row['train_s']:>8.3f}{star}"
                f"{reference['train_s']:>{column - 1}.3f}{star}{train_ratio:>7.2f}"
                f"{row['eval_ms']:>9.1f}{reference['eval_ms']:>{column}.1f}{eval_ratio:>7.2f}"
                f"{spread}",
                flush=True,
            )


if __name__ == "__main__":
    main()
