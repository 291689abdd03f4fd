"""``hydra/sweeper=twins``: Hydra's basic sweeper, plus each setting's single-task twins, one
per task the setting trains (:mod:`mtrec.runs.twins`)."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class TwinsSweeper(BasicSweeper):
    """The basic sweeper's jobs, after the single-task twins of every setting they sweep
    (``weighting=single weighting.task=<task>`` for each task of its ``tasks=[...]``)."""

    @staticmethod
    def split_arguments(overrides, max_batch_size):
        from mtrec.runs.twins import with_twins

        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        jobs = with_twins([job for batch in batches for job in batch])
        if max_batch_size is None:
            return [jobs]
        return [jobs[i : i + max_batch_size] for i in range(0, len(jobs), max_batch_size)]
