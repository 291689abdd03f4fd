"""Seconds per epoch, evaluation time and peak memory: the scale table, the template's overhead
and the levers at scale.

``make bench`` measures three tables, each row in its own process (so its peak resident memory
is its own), prints them and writes them into docs/performance.md (``--write``):

- scale: the template (the real Lightning Trainer built from the Hydra config, as
  ``mtrec-train`` runs it, checkpoints, metrics.json and TensorBoard included) on each shape
  and recipe of ``SCALE_ROWS``: ML-100K with dense Adam (the default recipe) and with sparse
  row updates, ML-1M with both recipes and with the ``history`` and ``graph`` encoders, the
  ML-25M and ML-32M shapes with ``experiment=large`` (ML-25M also with the encoders and the
  sampled softmax). Seconds of one training epoch, of one full evaluation (every held-out
  user against every item) and the peak resident memory. ML-100K is the real data set; the
  other shapes are ``data=synthetic``. A slow row measures its first steps only (the 4th
  element of its entry) and is projected.
- overhead (``--shapes``, default ML-100K): the default recipe as a plain PyTorch loop in the
  reference style (numpy shuffles and negatives, tensors made per batch, ``loss.item()``
  every step, plain Adam) next to the template, one thread.
- levers (``--levers``; on by default with ``--write``): the rows of ``LEVERS``, each lever
  against its baseline as the paired rows below measure them, with both runs' peak memory.

Figures are medians over epochs 2.. (the first pays one-off costs: compiling, allocation).
With ``--steps N`` (or a row's own steps) each epoch stops after N batches and seconds per
epoch are projected from the measured time per batch (marked ``*``); ``--steps`` overrides
every row's own.

``--write PATH`` replaces, for each table the run measures, the block between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in PATH (NAME: scale, overhead, levers)
with a line saying when, on how many cores and by which command it was measured, and the
table; the other blocks and the rest of the file stay as they are. Every block needed is
checked before anything is measured; the file is rewritten whole (a new file moved over it),
once per table. A table is replaced whole: measure all of its rows.

``--compile [modes]`` adds one ML-100K row per ``model.compile`` mode (``step`` without
names), relative to ``loss`` (the step's parts apart, the path before the compiled step);
``--weightings [names]`` adds one ML-100K row per loss-weighting strategy (all without names),
each relative to ``weighting=fixed``; ``--sharings [names]`` one per sharing architecture,
relative to ``model.net.sharing=shared``; ``--losses [names]`` one per interaction loss,
relative to ``bounded_bpr``; ``--encoders [names]`` one per encoder on ML-100K and on the
ML-1M shape, relative to ``id``; ``--item-to-item`` one with the item-to-item term, relative
to none (``model.net.item_to_item_learned=false`` among the overrides: its constant form).
These are printed only.
A row and its baseline run in two processes whose epochs take turns (baseline, row,
baseline, ...): a shared host's speed drifts by tens of percent between processes run one
after the other, far less between neighbouring epochs.
``--repeats N`` measures N such pairs and shows the one of median ratio, with the range of
the N ratios.

    python benchmarks/epoch_time.py [--write docs/performance.md]
        [--scale ml-100k/dense ml-1m/history-sparse ...] [--shapes ml-100k ml-1m]
        [--levers [encoders sharings losses | history graph stem ... | none]]
        [--epochs 2] [--steps N] [--compile [step false]] [--weightings [fixed pcgrad ...]]
        [--sharings [mmoe ...]] [--losses [softmax ...]] [--encoders [history]]
        [--item-to-item] [--repeats 3]
        [override ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shlex
import shutil
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

# (shape, recipe name, overrides, steps): the rows of the scale table. steps: batches per
# epoch measured, the rest projected (a row that would take minutes); None: the whole epoch
SCALE_ROWS = [
    ("ml-100k", "dense", [], None),
    ("ml-100k", "sparse", ["model.sparse_rows=true"], None),
    ("ml-1m", "dense", [], None),
    ("ml-1m", "graph", ["model.net.encoder=graph"], 400),
    ("ml-1m", "history", ["model.net.encoder=history"], None),
    ("ml-1m", "history sparse", ["model.net.encoder=history", "model.sparse_rows=true"], None),
    ("ml-1m", "large", ["experiment=large"], None),
    ("ml-1m", "large graph", ["experiment=large", "model.net.encoder=graph"], None),
    ("ml-25m", "large", ["experiment=large"], None),
    ("ml-25m", "large graph", ["experiment=large", "model.net.encoder=graph"], 32),
    ("ml-25m", "large history", ["experiment=large", "model.net.encoder=history"], 160),
    (
        "ml-25m",
        "large sampled softmax",
        ["experiment=large", "model.factorization_loss=sampled_softmax"],
        320,
    ),
    ("ml-32m", "large", ["experiment=large"], None),
]
# (group, key, lever, baseline, shape, steps): the levers table, each ``key=lever`` against
# ``key=baseline`` in two processes whose epochs take turns; steps as in SCALE_ROWS
LEVERS = [
    ("encoders", "model.net.encoder", "history", "id", "ml-100k", None),
    ("encoders", "model.net.encoder", "graph", "id", "ml-100k", None),
    ("encoders", "model.net.encoder", "history", "id", "ml-1m", None),
    ("encoders", "model.net.encoder", "graph", "id", "ml-1m", 400),
    ("sharings", "model.net.sharing", "stem", "shared", "ml-100k", None),
    ("sharings", "model.net.sharing", "cgc", "shared", "ml-100k", None),
    ("sharings", "model.net.sharing", "ple", "shared", "ml-100k", None),
    ("losses", "model.factorization_loss", "softmax", "bounded_bpr", "ml-100k", None),
    ("losses", "model.factorization_loss", "sampled_softmax", "bounded_bpr", "ml-100k", None),
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
        # on a GPU (trainer=gpu), the most its memory held at once
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
        "projected": projected,
    }


def row_command(
    loop: str,
    shape: str,
    args,
    extra: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    steps: int | None = None,
) -> list[str]:
    """The command that measures one row in a process of its own (``--row``): ``options``
    before the Hydra overrides, ``extra`` overrides after the command line's. ``steps``: the
    row's own batches per epoch, unless the command line's ``--steps`` sets them all."""
    steps = args.steps or steps
    command = [sys.executable, __file__, "--row", loop, "--shapes", shape, *options]
    command += ["--epochs", str(args.epochs), "--data-dir", args.data_dir]
    command += ["--steps", str(steps)] if steps else []
    return command + args.overrides + list(extra)


def measure_in_subprocess(
    loop: str, shape: str, args, extra: tuple[str, ...] = (), steps: int | None = None
) -> dict:
    command = row_command(loop, shape, args, extra, steps=steps)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{loop} on {shape} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_pair(
    shape: str, args, first: tuple[str, ...], second: tuple[str, ...], steps: int | None = None
):
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
                    row_command("template", shape, args, extra, turns, steps),
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


def scale_name(shape: str, recipe: str) -> str:
    """A scale row as ``--scale`` names it: a recipe's spaces written as ``-`` (one word)."""
    return f"{shape}/{recipe}".replace(" ", "-")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--write",
        metavar="PATH",
        help="write each table measured into PATH, between <!-- bench:NAME --> and "
        "<!-- /bench:NAME --> (NAME: scale, overhead, levers); without it, print only",
    )
    parser.add_argument(
        "--scale",
        nargs="*",
        default=[scale_name(shape, recipe) for shape, recipe, *_ in SCALE_ROWS],
        help="rows of the scale table, as shape/recipe with the recipe's spaces written as - "
        "(ml-25m/large-sampled-softmax) or quoted ('ml-1m/history sparse'); no names: skip the "
        "table",
    )
    parser.add_argument(
        "--shapes", nargs="*", default=["ml-100k"], help="plain loop vs template, per shape"
    )
    parser.add_argument(
        "--levers",
        nargs="*",
        help="the levers table: its groups (encoders sharings losses) or levers (history graph "
        "stem cgc ple softmax sampled_softmax); no names: all; none: skip the table; "
        "default: all with --write, none without",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, help="batches per epoch, every row's (projects the rest)"
    )
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
    # every name and every block checked before the first measurement
    scale_rows = chosen_scale_rows(args.scale)
    levers = chosen_levers(args.levers, bool(args.write))
    tables = [name for name, on in (("scale", scale_rows), ("overhead", args.shapes)) if on]
    tables += ["levers"] if levers else []
    write = Path(args.write) if args.write else None
    if write:
        check_blocks(write, tables)

    def publish(name: str, table: str) -> None:  # each table as soon as it is measured
        if write:
            write_block(write, name, f"{block_note(args, name)}\n\n{table}")
            print(f"wrote the {name} table into {write}", flush=True)

    if scale_rows:
        publish("scale", scale_table(args, scale_rows))
    if args.shapes:
        publish("overhead", overhead_table(args))
    if levers:
        publish("levers", levers_table(args, levers))

    def on(names, shapes=("ml-100k",)):  # (name, shape, steps): the whole epoch
        return [(name, shape, None) for shape in shapes for name in names]

    if args.compile is not None:
        variant_rows(args, "model.compile", "loss", on(args.compile or ["step"]))
    if args.weightings is not None:
        variant_rows(args, "weighting", "fixed", on(args.weightings or WEIGHTINGS))
    if args.sharings is not None:
        variant_rows(args, "model.net.sharing", "shared", on(args.sharings or SHARINGS))
    if args.losses is not None:
        names = args.losses or list(losses.FACTORIZATION_LOSSES)
        variant_rows(args, "model.factorization_loss", "bounded_bpr", on(names))
    if args.encoders is not None:
        names = on(args.encoders or ENCODERS, ("ml-100k", "ml-1m"))
        variant_rows(args, "model.net.encoder", "id", names)
    if args.item_to_item:
        variant_rows(args, "model.net.item_to_item", "false", on(["true"]))


def chosen_scale_rows(names: list[str]) -> list[tuple]:
    """The rows of ``SCALE_ROWS`` that ``--scale`` names, in its order."""
    rows = {scale_name(row[0], row[1]): row for row in SCALE_ROWS}
    unknown = [name for name in names if name.replace(" ", "-") not in rows]
    if unknown:
        sys.exit(f"--scale {' '.join(unknown)}: unknown rows; known: {' '.join(rows)}")
    return [rows[name.replace(" ", "-")] for name in names]


def chosen_levers(names: list[str] | None, writing: bool) -> list[tuple]:
    """The rows of ``LEVERS`` that ``--levers`` names (a group or a lever), in their order:
    all when it names none, or when it is absent and the tables are written."""
    if (names is None and not writing) or names == ["none"]:
        return []
    names = names or []
    known = list(dict.fromkeys(name for row in LEVERS for name in (row[0], row[2])))
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"--levers {' '.join(unknown)}: unknown; known: {' '.join(known)}, or none")
    return [row for row in LEVERS if not names or row[0] in names or row[2] in names]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def read_text(path: Path) -> str:
    with path.open(newline="") as file:  # line endings as they are: the rest stays byte for byte
        return file.read()


def block_span(text: str, name: str) -> tuple[int, int] | None:
    """Where the block of ``name`` lies in ``text``, between its markers: None unless each
    marker is there once, the opening one first."""
    opening, closing = markers(name)
    if text.count(opening) != 1 or text.count(closing) != 1:
        return None
    start, end = text.index(opening) + len(opening), text.index(closing)
    return (start, end) if start <= end else None


def check_blocks(path: Path, tables: list[str]) -> None:
    """Stop before any measuring if ``path`` cannot take every table to be written: minutes
    of measurement would otherwise be lost to a missing marker."""
    if not path.is_file():
        sys.exit(f"--write {path}: no such file")
    text = read_text(path)
    missing = [" ... ".join(markers(name)) for name in tables if block_span(text, name) is None]
    if missing:
        sys.exit(
            f"--write {path}: needs one marker pair around each table it is to hold, the "
            f"opening one first; missing or repeated: {', '.join(missing)}"
        )


def write_block(path: Path, name: str, content: str) -> None:
    """Replace the block of ``name`` in ``path`` with ``content``. The file is read again (an
    edit made meanwhile elsewhere in it is kept) and written beside itself, then moved over
    itself: a reader sees the old file or the new, never half of one."""
    text = read_text(path)
    span = block_span(text, name)
    if span is None:
        check_blocks(path, [name])
    start, end = span
    text = f"{text[:start]}\n{content}\n\n{text[end:]}"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as file:
            file.write(text)
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def block_note(args, table: str) -> str:
    """The line above a written table: when, on how many cores and by which command."""
    command = shlex.join(["python", *sys.argv])
    if args.epochs <= 2:
        epochs = f"epoch {args.epochs} of {args.epochs}"
    else:
        epochs = f"median of epochs 2-{args.epochs} of {args.epochs}"
    repeated = table == "levers" and args.repeats > 1
    pairs = f", {args.repeats} pairs per lever (the median shown)" if repeated else ""
    return (
        f"Measured {datetime.date.today()} on {os.cpu_count()} cores: `{command}`, "
        f"{epochs}{pairs}; `*`: projected from the steps measured."
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The table as the docs write theirs: ``| a | b |`` rows under a ``|---|---|`` line."""
    lines = [f"| {' | '.join(line)} |" for line in (header, *rows)]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])


def scale_table(args, rows: list[tuple]) -> str:
    """One template row per shape and recipe: training epoch, full evaluation, peak memory.
    Returns the table in markdown."""
    note = "; * projected" if args.steps or any(row[3] for row in rows) else ""
    print(f"scale: the template, median of epochs 2..{args.epochs}{note}")
    width = max(8, *(len(row[1]) + 1 for row in rows))
    header = f"{'shape':<10}{'recipe':<{width}}{'batch':>7}{'threads':>8}{'steps':>8}"
    print(header + f"{'train s':>10}{'eval s':>9}{'peak GiB':>9}", flush=True)
    table, gpu = [], False
    for shape, recipe, extra, steps in rows:
        row = measure_in_subprocess("template", shape, args, tuple(extra), steps)
        peak_gpu = row.get("peak_gpu_gb")
        gpu = gpu or peak_gpu is not None
        seconds = f"{row['train_s']:.2f}{'*' if row['projected'] else ''}"
        shown = seconds if row["projected"] else seconds + " "  # the figures aligned
        print(
            f"{shape:<10}{recipe:<{width}}{row['batch']:>7}{row['threads']:>8}{row['steps']:>8}"
            f"{shown:>10}{row['eval_s']:>9.2f}{row['peak_rss_gb']:>9.2f}",
            flush=True,
        )
        table.append(
            [shape.upper(), recipe, f"{row['batch']:,}", str(row["threads"]), f"{row['steps']:,}"]
            + [seconds, f"{row['eval_s']:.2f}", f"{row['peak_rss_gb']:.2f}"]
            + [f"{peak_gpu:.2f}" if peak_gpu is not None else "-"]
        )
    header = ["shape", "recipe", "batch", "threads", "steps per epoch"]
    header += ["training s per epoch", "evaluation s", "peak resident GiB", "peak GPU GiB"]
    if not gpu:  # a CPU machine's table: no GPU column
        header, table = header[:-1], [line[:-1] for line in table]
    return markdown_table(header, table)


def overhead_table(args) -> str:
    """The plain loop and the template on the default recipe, seconds per epoch with
    evaluation, and their ratio. Returns the table in markdown."""
    note = "; * projected from --steps" if args.steps else ""
    print(
        f"\noverhead: default recipe, batch 256, 1 thread, median of epochs 2..{args.epochs}{note}"
    )
    header = f"{'shape':<10}{'loop':<10}{'s / epoch':>11}{'ratio':>7}{'eval ms':>9}{'peak GiB':>9}"
    print(header, flush=True)
    table = []
    for shape in args.shapes:
        plain = None
        for loop in ("plain", "template"):  # each row printed as soon as it is measured
            row = measure_in_subprocess(loop, shape, args)
            plain = plain or row
            seconds = f"{row['seconds_per_epoch']:.3f}{'*' if row['projected'] else ''}"
            ratio = row["seconds_per_epoch"] / plain["seconds_per_epoch"]
            shown = seconds if row["projected"] else seconds + " "  # the figures aligned
            print(
                f"{shape:<10}{loop:<10}{shown:>11}{ratio:>7.2f}"
                f"{row['eval_ms']:>9.1f}{row['peak_rss_gb']:>9.2f}",
                flush=True,
            )
            name = "plain PyTorch loop" if loop == "plain" else loop
            table.append(
                [shape.upper(), name, seconds, f"{ratio:.2f}", f"{row['eval_ms']:.1f}"]
                + [f"{row['peak_rss_gb']:.2f}"]
            )
    header = ["shape", "loop", "seconds per epoch", "ratio", "evaluation ms", "peak resident GiB"]
    return markdown_table(header, table)


def levers_table(args, levers: list[tuple]) -> str:
    """The rows of ``LEVERS`` chosen, printed as :func:`variant_rows` prints them, one block
    per group. Returns the table in markdown, a row per lever and shape."""
    print("\nlevers: each against its baseline, their epochs in turn", flush=True)
    table = []
    for group in dict.fromkeys(lever[0] for lever in levers):
        chosen = [lever for lever in levers if lever[0] == group]
        key, baseline = chosen[0][1], chosen[0][3]
        title = key.rsplit(".", 1)[-1]
        rows = [(name, shape, steps) for _, _, name, _, shape, steps in chosen]
        for pair in variant_rows(args, key, baseline, rows):
            row, reference, ratios = pair["row"], pair["reference"], pair["ratios"]
            star = "*" if row["projected"] else ""
            spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            table.append(
                [f"{title} `{pair['name']}` vs `{baseline}`", pair["shape"].upper()]
                + [f"{row['train_s']:.3f}{star}", f"{reference['train_s']:.3f}{star}"]
                + [f"{pair['train_ratio']:.2f}{spread}", f"{row['eval_ms']:.1f}"]
                + [f"{reference['eval_ms']:.1f}", f"{pair['eval_ratio']:.2f}"]
                + [f"{row['peak_rss_gb']:.2f}", f"{reference['peak_rss_gb']:.2f}"]
            )
    header = ["lever", "shape", "train s", "baseline s", "ratio", "eval ms", "baseline ms"]
    header += ["ratio", "peak GiB", "baseline peak GiB"]
    return markdown_table(header, table)


def paired(args, key: str, name: str, baseline: str, shape: str, steps: int | None) -> dict:
    """``key=name`` against ``key=baseline`` on ``shape``, their epochs in turn
    (:func:`measure_pair`), ``--repeats`` times: the pair of median training ratio, with the
    sorted ratios of all."""
    pairs = [
        measure_pair(shape, args, (f"{key}={baseline}",), (f"{key}={name}",), steps)
        for _ in range(args.repeats)
    ]
    ratios = sorted(row["train_s"] / reference["train_s"] for reference, row in pairs)
    pairs.sort(key=lambda pair: pair[1]["train_s"] / pair[0]["train_s"])
    reference, row = pairs[(len(pairs) - 1) // 2]
    return {
        "row": row,
        "reference": reference,
        "train_ratio": ratios[(len(pairs) - 1) // 2],
        "eval_ratio": row["eval_ms"] / reference["eval_ms"],
        "ratios": ratios,
    }


def variant_rows(args, key: str, baseline: str, rows: list[tuple]) -> list[dict]:
    """One template row per ``(value of key, shape, steps)`` of ``rows``, relative to
    ``baseline``'s, the two measured with their epochs in turn (:func:`paired`; the
    baseline's figures printed beside): the training epoch and the evaluation each against
    the baseline's, and both runs' peak memory. With ``--repeats N``, N such pairs, the one of
    median training ratio shown with the range of the N ratios. Returns what :func:`paired`
    returns, per row."""
    title = key.rsplit(".", 1)[-1]
    rows = [row for row in rows if row[0] != baseline]
    width = max(14, len(title) + 1, *(len(row[0]) + 1 for row in rows))
    column = max(13, len(baseline) + 5)  # the baseline's figures
    header = f"{'shape':<9}{'train s':>9}{baseline + ' s':>{column}}{'ratio':>7}"
    header += f"{'eval ms':>9}{baseline + ' ms':>{column}}{'ratio':>7}"
    header += f"{'peak GiB':>9}{baseline + ' GiB':>{column}}"
    print(f"\n{title:<{width}}{header}", flush=True)
    results = []
    for name, shape, steps in rows:
        pair = paired(args, key, name, baseline, shape, steps)
        row, reference, ratios = pair["row"], pair["reference"], pair["ratios"]
        star = "*" if row["projected"] else " "
        spread = f"  ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
        print(
            f"{name:<{width}}{shape:<9}{row['train_s']:>8.3f}{star}"
            f"{reference['train_s']:>{column - 1}.3f}{star}{pair['train_ratio']:>7.2f}"
            f"{row['eval_ms']:>9.1f}{reference['eval_ms']:>{column}.1f}{pair['eval_ratio']:>7.2f}"
            f"{row['peak_rss_gb']:>9.2f}{reference['peak_rss_gb']:>{column}.2f}{spread}",
            flush=True,
        )
        results.append(pair | {"name": name, "shape": shape})
    return results


if __name__ == "__main__":
    main()
