"""A search: Ray Tune schedules trials, Optuna samples them (multi-objective), MLflow records them.

The only module that imports ``ray.tune``. Everything is validated before Ray starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters need no token
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is our logger
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar replaces Ray's tables
from ray.tune import Callback  # noqa: E402

from autopeft.config import PeftConfig, TrainBudget
from autopeft.errors import ConfigError
from autopeft.pareto import pareto_front
from autopeft.trial import METRIC, OBJECTIVES, PEAK_MEMORY_MB, TRAINABLE_PARAMS, TrialContext

# Multi-objective Optuna samplers by name; each takes the search seed.
SAMPLERS: dict[str, Callable[[int, int], Any]] = {}


def _sampler(name: str):
    def register(fn):
        SAMPLERS[name] = fn
        return fn
    return register


@_sampler("tpe")
def _tpe(seed: int, num_samples: int):
    import optuna
    # Few random start-up trials: searches here are tens of trials, not hundreds.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, num_samples // 4)),
                                      constant_liar=True)


@_sampler("nsga2")
def _nsga2(seed: int, num_samples: int):
    import optuna
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))


@_sampler("random")
def _random(seed: int, num_samples: int):
    import optuna
    return optuna.samplers.RandomSampler(seed=seed)


@_sampler("gp")
def _gp(seed: int, num_samples: int):
    import optuna
    return optuna.samplers.GPSampler(seed=seed)


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search needs; the CLI fills it from flags."""

    name: str
    model: str = "all-MiniLM-L6-v2"
    task: str = "sst2"
    space: str = "autopeft"
    budget: TrainBudget = field(default_factory=TrainBudget)
    num_samples: int = 8
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    sampler: str = "tpe"
    memory_objective: bool = False  # add peak training memory as a third objective
    seed: int = 0
    data_dir: str | None = None
    workdir: str = "autopeft_runs"  # Optuna SQLite study and Ray results, unless told otherwise
    storage: str | None = None  # Optuna RDB URL; default sqlite:///<workdir>/optuna.db
    tracking_uri: str | None = None
    experiment: str = "autopeft"
    ray_address: str | None = None

    @property
    def objectives(self) -> dict[str, str]:
        keys = [METRIC, TRAINABLE_PARAMS] + ([PEAK_MEMORY_MB] if self.memory_objective else [])
        return {k: OBJECTIVES[k] for k in keys}

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.workdir) / 'optuna.db').resolve()}"


def default_name(task: str, space: str) -> str:
    return f"{Path(task).stem}-{Path(space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class SearchResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    metric_name: str
    records: list[dict[str, Any]]

    @property
    def front(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["pareto"]]


@dataclass
class Prepared:
    """What validation produced: resolved inputs, ready to hand to Ray."""

    settings: SearchSettings
    task: Any
    space: Any
    model: Any
    context: TrialContext


def prepare(settings: SearchSettings) -> Prepared:
    """Validate every input before anything starts; raises AutopeftError subclasses."""
    from autopeft.models import inspect_model
    from autopeft.spaces import load_space
    from autopeft.tasks import load_split, load_task, resolve_data_dir

    if settings.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {settings.sampler!r}; choose one of {sorted(SAMPLERS)}")
    if settings.num_samples < 1 or settings.max_concurrent_trials < 1:
        raise ConfigError("--num-samples and --max-concurrent-trials must be at least 1")
    task = load_task(settings.task)
    space = load_space(settings.space)
    model = inspect_model(settings.model)
    space.check_model(model.num_layers)
    data_dir = resolve_data_dir(settings.data_dir)
    for split in ("train", "dev"):  # fail now, not in every trial
        load_split(task, split, data_dir)
    task_ref = str(task.source_path) if task.source_path else settings.task
    ctx = TrialContext(settings.model, task_ref, settings.budget, str(data_dir) if data_dir else None)
    return Prepared(settings, task, space, model, ctx)


def run_search(settings: SearchSettings, show_progress: bool = True,
               prepared: Prepared | None = None) -> SearchResult:
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from autopeft.tracking import SearchTracker
    from autopeft.trial import ray_trainable

    prep = prepared or prepare(settings)
    objectives = settings.objectives
    tracker = SearchTracker(settings.tracking_uri, settings.experiment, settings.name, {
        "model": settings.model, "task": prep.task.name, "space": settings.space, "sampler": settings.sampler,
        "num_samples": settings.num_samples, "objectives": ",".join(objectives), "seed": settings.seed,
        **{f"budget/{k}": v for k, v in settings.budget.to_dict().items()},
        "task_ref": _task_ref(settings.task),  # what `autopeft export` writes: loadable from anywhere
    }, tags={"autopeft.task": prep.task.name, "autopeft.model": settings.model,
             "autopeft.metric_name": prep.task.primary_metric})

    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(settings.storage_url())
    sampler = SAMPLERS[settings.sampler](settings.seed, settings.num_samples)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=settings.name, sampler=sampler, load_if_exists=True,
                                directions=["maximize" if m == "max" else "minimize" for m in objectives.values()])
    if not study.trials:  # a fresh study starts from the space's known-good points
        for point in prep.space.warm_start_points(prep.model.num_layers):
            study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr("task", prep.task.name)
    study.set_user_attr("model", settings.model)
    study.set_user_attr("objectives", list(objectives))

    searcher = OptunaSearch(space=prep.space.define_by_run(prep.model.num_layers), metric=list(objectives),
                            mode=list(objectives.values()), sampler=sampler, storage=storage,
                            study_name=settings.name, seed=settings.seed)
    records: dict[str, dict[str, Any]] = {}
    callbacks = [_TrackingCallback(tracker, records),
                 _ProgressCallback(settings.num_samples, prep.task.primary_metric, show_progress)]

    started_ray = False
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
        started_ray = True
    trainable = tune.with_resources(
        tune.with_parameters(ray_trainable, context=prep.context.to_dict()),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=settings.num_samples,
                                    max_concurrent_trials=settings.max_concurrent_trials,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=settings.name, storage_path=str((Path(settings.workdir) / "ray").resolve()),
                                  callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
    )
    failed = False
    try:
        with callbacks[1]:
            tuner.fit()
    except BaseException:
        failed = True
        raise
    finally:
        rows = _with_front(list(records.values()), objectives)
        if rows:
            tracker.log_front(rows, prep.task.primary_metric)
            _log_report(tracker, rows, objectives, prep.task.primary_metric)
        tracker.finish(failed=failed)
        if started_ray:
            ray.shutdown()
    return SearchResult(settings.name, tracker.parent_id, tracker.uri, prep.task.primary_metric, rows)


def _log_report(tracker: Any, rows: list[dict[str, Any]], objectives: dict[str, str], metric_name: str) -> None:
    """The interactive Pareto report on the parent run; a plotting failure must not lose the search."""
    from autopeft.report import log_report

    try:
        log_report(tracker.uri, tracker.parent_id, rows, objectives, metric_name, f"Pareto report: {tracker.search_name}")
    except Exception as exc:  # noqa: BLE001 - the CSV/PNG front is already logged
        import warnings
        warnings.warn(f"could not write the Pareto HTML report: {exc}")


def _task_ref(task: str) -> str:
    return str(Path(task).resolve()) if Path(task).suffix in (".yaml", ".yml") else task


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default spells out the whole config


def _with_front(rows: list[dict[str, Any]], objectives: dict[str, str]) -> list[dict[str, Any]]:
    done = [r for r in rows if r["status"] == "COMPLETE"]
    front = set(pareto_front([[r[k] for k in objectives] for r in done], list(objectives.values())))
    for i, r in enumerate(done):
        r["pareto"] = i in front
    for r in rows:
        r.setdefault("pareto", False)
    return rows


# ---------------------------------------------------------------------------- Ray callbacks


class _TrackingCallback(Callback):
    """Mirror Ray trial events into MLflow runs and the in-memory records of the search."""

    def __init__(self, tracker: Any, records: dict[str, dict[str, Any]]) -> None:
        self.tracker, self.records = tracker, records

    def on_trial_start(self, iteration, trials, trial, **info):
        from autopeft.tracking import flatten

        config = dict(trial.config)
        peft = config.pop("peft_config")
        params = flatten({k: v for k, v in config.items() if k != "training"})
        params.update({f"train/{k}": v for k, v in config.get("training", {}).items()})
        number = len(self.records)
        run_id = self.tracker.trial_started(trial.trial_id, f"{self.tracker.search_name}-t{number:03d}", params, peft)
        self.records[trial.trial_id] = {"trial": number, "ray_trial_id": trial.trial_id, "run_id": run_id,
                                        "status": "RUNNING", "peft": PeftConfig.from_dict(peft).describe(),
                                        "peft_config": peft}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keep = {k: v for k, v in result.items() if not k.startswith(("config", "time_", "timestamp", "pid",
                                                                       "date", "hostname", "iterations", "done",
                                                                       "training_iteration", "trial_id",
                                                                       "experiment_tag", "checkpoint_dir_name"))}
        keep["node_id"] = result.get("node_id")
        self.tracker.trial_result(trial.trial_id, keep)
        self.records[trial.trial_id].update(keep)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.records[trial.trial_id]["status"] = "COMPLETE"
        self.tracker.trial_finished(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _read_error(trial)
        self.records[trial.trial_id].update(status="FAILED", error=error.strip().splitlines()[-1] if error else "")
        self.tracker.trial_finished(trial.trial_id, failed=True, error=error)


def _read_error(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", "") or "trial failed (no error file)")


class _ProgressCallback(Callback):
    """A progress bar over trials with the best metric so far."""

    def __init__(self, total: int, metric_name: str, enabled: bool) -> None:
        self.total, self.metric_name, self.enabled = total, metric_name, enabled
        self.best: float | None = None
        self.failed = 0

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.progress = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.description}"))
            self.progress.start()
            self.task = self.progress.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def _update(self, advance: int = 0, running: int | None = None) -> None:
        if not self.enabled:
            return
        best = f"best {self.metric_name} {self.best:.4f}" if self.best is not None else "no result yet"
        extra = f", {self.failed} failed" if self.failed else ""
        self.progress.update(self.task, advance=advance, description=f"{best}{extra}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(METRIC)
        if value is not None and (self.best is None or value > self.best):
            self.best = value

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(advance=1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._update(advance=1)
