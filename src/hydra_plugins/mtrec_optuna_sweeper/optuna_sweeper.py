"""``hydra/sweeper=optuna``: a search on Optuna's current API, with pruning.

Up to ``n_jobs`` trials run at once (side by side with ``hydra/launcher=joblib``), each asked
of the study when a place is free and told back when its run ends, so a pruned or short trial
frees its core for the next one at once; the runs report their per-epoch validation
metric to the study themselves (:class:`~mtrec.search.pruning.TrialPruning`), which is how
a trial is pruned while it trains. Hydra's earlier Optuna sweeper pins Optuna below 3.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from mtrec.errors import ConfigError

log = logging.getLogger(__name__)
INSTALL = "pip install 'mtrec[search]' (in a checkout: pip install -e '.[search]')"


class OptunaSweeper(Sweeper):
    """Runs ``n_trials`` trials of the study ``study_name`` in ``storage`` (a database URL;
    None: ``<sweep folder>/optuna.db``), ``n_jobs`` at a time, sampling ``params``."""

    def __init__(
        self,
        direction: str,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: Any = None,
        pruner: Any = None,
        params: DictConfig | None = None,
    ) -> None:
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError(
                f"A search (hydra/sweeper=optuna) needs the optuna package. Fix: {INSTALL}."
            )
        if direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"hydra.sweeper.direction={direction} is not valid: use maximize or minimize."
            )
        if not (isinstance(n_trials, int) and n_trials >= 1):
            raise ConfigError(f"hydra.sweeper.n_trials={n_trials} is not valid: use 1 or more.")
        if not (isinstance(n_jobs, int) and n_jobs >= 1):
            raise ConfigError(f"hydra.sweeper.n_jobs={n_jobs} is not valid: use 1 or more.")
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler, self.pruner = sampler, pruner
        self.params = OmegaConf.to_container(params, resolve=True) if params else {}
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from mtrec.search.space import override, search_space
        from mtrec.search.study import leftover_trials, record_best

        metric = self.config.get("optimized_metric")
        if not metric:
            raise ConfigError(
                "hydra/sweeper=optuna needs the metric each trial returns: set "
                "optimized_metric, e.g. optimized_metric=val/mrr (or use hparams_search=optuna)."
            )
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise ConfigError(
                "hydra.sweeper.params has nothing to search: give at least one key a "
                "choice(...), range(...) or interval(...)."
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's sweepers do
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials are logged below
        storage = self.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,  # Hydra built both from their configs
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what names the axis
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([str(metric)])
        leftover_trials(study)
        done = sum(t.state.is_finished() for t in study.trials)
        log.info(
            "Study %s in %s: %d trials to run of %d (%d done before), %d at a time",
            self.study_name,
            storage,
            max(self.n_trials - done, 0),
            self.n_trials,
            done,
            self.n_jobs,
        )
        shared = [f"search.study={self.study_name}", f"search.storage='{storage}'"]
        job_of: dict[int, int] = {}  # trial number -> its job's index (its folder's number)

        def ask():
            trial = study.ask(space)
            job_of[trial.number] = self.job_idx
            self.job_idx += 1
            return trial

        def run(trial):
            overrides = (
                [f"search.trial={trial.number}"]
                + [override(k, v) for k, v in trial.params.items()]
                + fixed
                + shared
            )
            (job,) = self.launcher.launch([tuple(overrides)], initial_job_idx=job_of[trial.number])
            return job

        def tell(trial, job) -> bool:
            value, state = _outcome(job)
            if state == "completed":
                study.tell(trial, value, skip_if_finished=True)  # pruned: told by the run
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return state == "interrupted"

        side_by_side = self.n_jobs if _runs_jobs_apart(self.launcher) else 1
        run_rolling(max(self.n_trials - done, 0), side_by_side, ask, run, tell)
        record_best(study, sweep_dir, storage)


def run_rolling(
    count: int,
    at_once: int,
    ask: Callable[[], Any],
    run: Callable[[Any], Any],
    tell: Callable[[Any, Any], bool],
) -> None:
    """Runs ``count`` trials, ``at_once`` at a time: a trial is asked for as soon as a place
    is free (``ask``), run in a worker thread (``run``; the launcher's job runs in its own
    process) and told back as soon as it ends (``tell``; True stops asking for more, e.g.
    on an interrupted run). Batches would leave a core idle from the end of the shorter
    trial (a pruned one, say) to the end of the longer one."""
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        running: dict = {}
        asked, stopping = 0, False
        while running or (asked < count and not stopping):
            while len(running) < at_once and asked < count and not stopping:
                trial = ask()
                running[pool.submit(run, trial)] = trial
                asked += 1
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stopping = tell(running.pop(future), future.result()) or stopping


def _runs_jobs_apart(launcher) -> bool:
    """Whether the launcher runs each job in a process of its own (joblib's), so two
    launches may run at once; Hydra's basic launcher runs jobs in this process, one by one."""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    except ImportError:  # the plugin is not installed: nothing runs apart
        return False
    return isinstance(launcher, JoblibLauncher)


def _outcome(job) -> tuple[float | None, str]:
    """The trial's value and how its run ended: completed, failed or interrupted."""
    try:
        value = job.return_value
    except Exception as error:  # the run's own failure: its job.json holds the message
        log.warning("A trial failed: %s: %s", type(error).__name__, error)
        return None, "failed"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "interrupted"
    return float(value), "completed"
