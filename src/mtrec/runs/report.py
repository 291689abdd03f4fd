"""The report of a sweep: its summary tables and figures, and the ``mtrec-report`` command.

``mtrec-report <sweep folder>`` (re)writes ``summary.csv``, ``summary.md`` (with a table of
mean ± sd over the seeds, also ``summary_over_seeds.csv``, when a seed is swept) and the PNG
figures from what the jobs left in their run folders, so it works for any finished or
interrupted sweep and any launcher. The tables are :mod:`mtrec.runs.tables`, the figures
:mod:`mtrec.runs.figures`.

The summary has one row per job: its swept values, ``status``, ``wall_seconds``, ``epochs``,
then each metric's final value, best value and best epoch (the ``mtl/`` diagnostics too, e.g.
``mtl/effective_rank/<side>/<task>``), then, when the sweep holds single-task twins,
``delta_m`` (Δm against the twins of the run's setting) and ``delta_m_best`` (against the
best twin of each task anywhere in the sweep), and ``error``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mtrec.files import atomic_write_text
from mtrec.runs import folder as run_folder
from mtrec.runs.figures import write_figures
from mtrec.runs.tables import (
    Job,
    compact_table,
    markdown_table,
    mean_sd_table,
    metric_names,
    over_seeds,
    read_sweep,
    seed_keys,
    summary_table,
)

# Job, markdown_table and metric_names live in tables; importable from here as before
__all__ = ["Job", "main", "markdown_table", "metric_names", "write_report"]


def write_report(sweep_dir: str | Path) -> pd.DataFrame:
    """Write ``summary.csv``, ``summary.md`` and the figures of a sweep; return the table."""
    sweep_dir = Path(sweep_dir)
    jobs, keys = read_sweep(sweep_dir)
    table = summary_table(jobs, keys)
    atomic_write_text(sweep_dir / "summary.csv", table.to_csv(index=False))
    markdown = (
        f"# Sweep {sweep_dir.name}\n\n{len(jobs)} jobs; swept: {', '.join(keys) or 'nothing'}\n\n"
        + markdown_table(compact_table(table))
    )
    seeds = seed_keys(keys)
    if seeds and table[seeds].drop_duplicates().shape[0] > 1:  # mean ± sd over the seeds
        grouped = over_seeds(table, keys)
        atomic_write_text(sweep_dir / "summary_over_seeds.csv", grouped.to_csv(index=False))
        markdown += "\n## Over seeds (completed runs: mean ± sd)\n\n"
        markdown += markdown_table(mean_sd_table(grouped))
    atomic_write_text(sweep_dir / "summary.md", markdown)
    write_figures(jobs, keys, sweep_dir)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mtrec-report", description="Write the summary and figures of a sweep folder."
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder, e.g. outputs/sweeps/cs330/<date>"
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not run_folder.run_folders(args.sweep_dir):
        parser.error(f"{args.sweep_dir} is not a sweep folder (no run folders inside)")
    table = write_report(args.sweep_dir)
    print(markdown_table(compact_table(table)))
    print(f"Wrote summary.csv, summary.md and figures to {args.sweep_dir}")


if __name__ == "__main__":
    main()
