"""Where a sharing architecture's training step goes: milliseconds of the compiled forward,
forward and backward, and the whole step (with fused Adam), per architecture.

The net and the objective alone, on batches of ML-100K's shape (943 users, 1,682 items,
batch 256, one negative), one thread, freed memory kept as ``mtrec-train`` keeps it: no
data module, no Lightning. It separates the step's parts that ``epoch_time.py --sharings``
measures together, so a change to a mixer can be judged in a minute. Best of 3 rounds.

    python benchmarks/step_time.py                        # shared and the table mixtures
    python benchmarks/step_time.py shared mmoe:experts=2 cgc:experts=1 ple stem
    python benchmarks/step_time.py --glibc-defaults shared mmoe    # as keep_freed_memory=false
"""

from __future__ import annotations

import argparse
import time

import torch

from mtrec.data.info import DataInfo
from mtrec.memory import keep_freed_memory
from mtrec.models import MultiTaskNet
from mtrec.models.mixers import TABLE_MIXERS
from mtrec.mtl.objective import Objective
from mtrec.mtl.tasks import reference_tasks

USERS, ITEMS, BATCH = 943, 1682, 256


def parse(spec: str) -> tuple[str, dict[str, int]]:
    """``sharing[:setting=integer...]`` as the sharing and the net's integer settings."""
    sharing, *settings = spec.split(":")
    return sharing, {key: int(value) for key, value in (s.split("=") for s in settings)}


def best_ms(function, steps: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for step in range(steps):
            function(step)
        best = min(best, (time.perf_counter() - start) / steps)
    return best * 1e3


def measure(sharing: str, settings: dict[str, int], steps: int) -> tuple[float, float, float]:
    torch.compiler.reset()
    torch.manual_seed(0)
    net = MultiTaskNet(DataInfo(USERS, ITEMS), sharing=sharing, **settings, tasks=reference_tasks())
    objective = Objective()
    loss = torch.compile(lambda batch: sum(objective(net, batch).values()))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    batches = [
        {
            "users": torch.randint(0, USERS, (BATCH,)),
            "items": torch.randint(0, ITEMS, (BATCH,)),
            "negatives": torch.randint(0, ITEMS, (BATCH, 1)),
            "ratings": torch.randint(1, 6, (BATCH,)).float(),
        }
        for _ in range(10)
    ]

    def forward(step: int) -> None:
        loss(batches[step % 10])

    def backward(step: int) -> None:
        optimizer.zero_grad()
        loss(batches[step % 10]).backward()

    def whole(step: int) -> None:
        backward(step)
        optimizer.step()

    for step in range(30):  # compiling, allocation
        whole(step)
    return best_ms(forward, steps), best_ms(backward, steps), best_ms(whole, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("architectures", nargs="*", default=["shared", *TABLE_MIXERS])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (keep_freed_memory=false)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.glibc_defaults:
        keep_freed_memory()
    print(f"{'architecture':<24}{'forward':>9}{'+backward':>11}{'step':>8}  ms")
    for spec in args.architectures:
        forward, backward, whole = measure(*parse(spec), args.steps)
        print(f"{spec:<24}{forward:>9.2f}{backward:>11.2f}{whole:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
