"""A search: Ray Tune schedules trials, Optuna samples them (multi-objective), MLflow records them.

The only module that imports ``ray.tune``. Everything is validated before Ray starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters need no token
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is our logger
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar replaces Ray's tables
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches us: we mark and save
from ray.tune import Callback  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from autopeft.cluster import check_ray_address, check_resources, connect, on_cluster, trial_data_dir
from autopeft.config import TrainBudget
from autopeft.errors import ConfigError, DataError
from autopeft.pareto import mark_front
from autopeft.trial import METRIC, OBJECTIVES, PEAK_MEMORY_MB, TRAINABLE_PARAMS, TrialContext

# Multi-objective Optuna samplers by name; each takes the search seed.
SAMPLERS: dict[str, Callable[[int, int], Any]] = {}


def _sampler(name: str):
    def register(fn):
        SAMPLERS[name] = fn
        return fn
    return register


def _startup(num_samples: int) -> int:
    # Few random start-up trials: searches here are tens of trials, not hundreds.
    return max(2, min(10, num_samples // 4))


@_sampler("tpe")
def _tpe(seed: int, num_samples: int):
    import optuna
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup(num_samples), constant_liar=True)


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
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup(num_samples))


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
    sampler: str = "gp"  # won the sampler benchmark (benchmarks/README.md)
    memory_objective: bool = False  # add peak training memory as a third objective
    seed: int = 0
    data_dir: str | None = None
    workdir: str = "autopeft_runs"  # Optuna SQLite study and Ray results, unless told otherwise
    storage: str | None = None  # Optuna RDB URL; default sqlite:///<workdir>/optuna.db
    tracking_uri: str | None = None
    experiment: str = "autopeft"
    ray_address: str | None = None
    trial_memory_limit_mb: float | None = None  # a trial whose peak memory passes this fails
    retry_lost_trials: int = 1  # times a configuration whose trial died with its node or process is asked again

    @property
    def objectives(self) -> dict[str, str]:
        keys = [METRIC, TRAINABLE_PARAMS] + ([PEAK_MEMORY_MB] if self.memory_objective else [])
        return {k: OBJECTIVES[k] for k in keys}

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.workdir) / 'optuna.db').resolve()}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "budget": self.budget.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSettings":
        from autopeft.config import dataclass_from_dict

        return dataclass_from_dict(cls, {**data, "budget": TrainBudget.from_dict(data["budget"])}, "search settings")

    def replace(self, **changes: Any) -> "SearchSettings":
        return dataclasses.replace(self, **changes)


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
    notes: list[str] = field(default_factory=list)  # what the user should know before trials start


def prepare(settings: SearchSettings) -> Prepared:
    """Validate every input before anything starts; raises AutopeftError subclasses."""
    from autopeft.models import inspect_model
    from autopeft.spaces import load_space
    from autopeft.tasks import load_split, load_task, resolve_data_dir

    check_ray_address(settings.ray_address)
    if settings.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {settings.sampler!r}; choose one of {sorted(SAMPLERS)}")
    if settings.num_samples < 1 or settings.max_concurrent_trials < 1:
        raise ConfigError("--num-samples and --max-concurrent-trials must be at least 1")
    if settings.trial_memory_limit_mb is not None and settings.trial_memory_limit_mb <= 0:
        raise ConfigError("--trial-memory-limit-mb must be positive")
    if settings.retry_lost_trials < 0:
        raise ConfigError(f"--retry-lost-trials must be 0 or more, got {settings.retry_lost_trials}")
    from autopeft.heartbeat import interval_s
    interval_s()  # a malformed AUTOPEFT_HEARTBEAT_S fails here, not in the driver's thread
    from autopeft.tracking import check_reachable, resolve_tracking_uri
    check_reachable(resolve_tracking_uri(settings.tracking_uri))
    task = load_task(settings.task)
    space = load_space(settings.space)
    model = inspect_model(settings.model)
    space.check_model(model.num_layers)
    notes: list[str] = []
    try:
        data_dir = resolve_data_dir(settings.data_dir)
        for split in ("train", "dev"):  # fail now, not in every trial
            load_split(task, split, data_dir)
    except DataError as exc:
        if not on_cluster(settings.ray_address):
            raise
        # The driver of a cluster search may hold no data: the workers resolve their own.
        data_dir = None
        notes.append(f"the data was not checked here (the workers resolve it): {exc}")
    ctx = TrialContext(_model_ref(settings.model), _task_ref(task, settings.task), settings.budget,
                       trial_data_dir(settings.data_dir, data_dir, settings.ray_address),
                       settings.trial_memory_limit_mb)
    return Prepared(settings, task, space, model, ctx, notes)


def _model_ref(given: str) -> str:
    # Trials run in their own working directories (and on a cluster, on other machines): a local
    # model folder travels as an absolute path (on a cluster, the same on every node); names and
    # Hub ids travel as given and resolve in each trial's process.
    path = Path(given).expanduser()
    return str(path.absolute()) if path.is_dir() else given


def _task_ref(task: Any, given: str) -> str:
    # A shipped task travels by name, so a worker finds it in its own installation; a user's task
    # file by absolute path (on a cluster it must be at that path on every node).
    from autopeft.tasks import available_tasks

    shipped = {path.resolve(): name for name, path in available_tasks().items()}
    if task.source_path is None:
        return given
    return shipped.get(task.source_path, str(task.source_path))


def run_search(settings: SearchSettings, show_progress: bool = True,
               prepared: Prepared | None = None) -> SearchResult:
    """Run (or continue) the search ``settings.name`` until its study holds ``num_samples`` trials.

    Re-running with the same name continues it: finished trials stay, trials a dead driver left
    running are marked interrupted and asked again, the MLflow parent run is reused. Another
    process running the same name on the same storage cooperates on the same study.
    """
    import optuna
    import ray
    from ray import tune

    from autopeft import study as studies
    from autopeft.heartbeat import Heartbeat
    from autopeft.tracking import SearchTracker
    from autopeft.trial import ray_trainable

    prep = prepared or prepare(settings)
    objectives = settings.objectives
    tracker = SearchTracker(settings.tracking_uri, settings.experiment, settings.name, {
        "model": settings.model, "task": prep.task.name, "space": settings.space, "sampler": settings.sampler,
        "num_samples": settings.num_samples, "objectives": ",".join(objectives), "seed": settings.seed,
        **{f"budget/{k}": v for k, v in settings.budget.to_dict().items()},
        "task_ref": prep.context.task,  # what `autopeft export` writes: a shipped name or an absolute path
    }, tags={"autopeft.task": prep.task.name, "autopeft.model": settings.model,
             "autopeft.metric_name": prep.task.primary_metric})

    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(settings.storage_url())
    sampler = SAMPLERS[settings.sampler](settings.seed, settings.num_samples)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=settings.name, sampler=sampler, load_if_exists=True,
                                directions=["maximize" if m == "max" else "minimize" for m in objectives.values()])
    if studies.SETTINGS_ATTR not in study.user_attrs:  # new: record how to resume it, warm-start it
        study.set_user_attr(studies.SETTINGS_ATTR, settings.to_dict())
        for point in prep.space.warm_start_points(prep.model.num_layers):
            study.enqueue_trial(point, skip_if_exists=True)
    owner = studies.this_process()
    # Reclaims dead drivers' trials now (resume, joining) and at every beat while this one runs.
    heartbeat = Heartbeat(study, settings.storage_url(), owner, on_reclaimed=tracker.mark_interrupted)
    heartbeat.reclaim()

    remaining = settings.num_samples - len(studies.counted(study.trials))
    tracking = _TrackingCallback(tracker)
    callbacks = [tracking, _ProgressCallback(settings.num_samples, prep.task.primary_metric, show_progress,
                                             len(studies.counted(study.trials)), tracking.asked_again)]
    status = "FINISHED"
    started_ray = False
    try:
        if remaining > 0:
            if not ray.is_initialized():
                connect(settings.ray_address)
                started_ray = True
            searcher = _StudySearcher(
                space=prep.space.define_by_run(prep.model.num_layers), metric=list(objectives),
                mode=list(objectives.values()), sampler=sampler, storage=storage, study_name=settings.name,
                seed=settings.seed, target=settings.num_samples, owner=owner,
                retry_lost_trials=settings.retry_lost_trials)
            tracking.searcher = searcher  # records each failure in the study, with its reason
            trainable = tune.with_resources(
                tune.with_parameters(ray_trainable, context=prep.context.to_dict()),
                {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
            tuner = tune.Tuner(
                trainable,
                # Unbounded: the searcher ends the search at the study's target (trials asked
                # again, by this driver or a cooperating one, need samples beyond `remaining`).
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                            max_concurrent_trials=settings.max_concurrent_trials,
                                            trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=settings.name, storage_path=str((Path(settings.workdir) / "ray").resolve()),
                    callbacks=callbacks, verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
            )
            check_resources(settings.cpus_per_trial, settings.gpus_per_trial)
            with callbacks[1], heartbeat:
                tuner.fit()
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if started_ray:
            ray.shutdown()  # stops this driver's trials before they are marked
        tracker.mark_interrupted([t.number for t in studies.reconcile(study, owners_to_release={owner})])
        rows = mark_front(tracker.trial_records(), objectives)
        if rows:
            tracker.log_front(rows, prep.task.primary_metric)
            _log_report(tracker, rows, objectives, prep.task.primary_metric)
        tracker.finish(status=status)
    return SearchResult(settings.name, tracker.parent_id, tracker.uri, prep.task.primary_metric, rows)


def _log_report(tracker: Any, rows: list[dict[str, Any]], objectives: dict[str, str], metric_name: str) -> None:
    """The interactive Pareto report on the parent run; a plotting failure must not lose the search."""
    from autopeft.report import log_report

    try:
        log_report(tracker.uri, tracker.parent_id, rows, objectives, metric_name, f"Pareto report: {tracker.search_name}")
    except Exception as exc:  # noqa: BLE001 - the CSV/PNG front is already logged
        import warnings
        warnings.warn(f"could not write the Pareto HTML report: {exc}")


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default spells out the whole config


# ---------------------------------------------------------------------------- Ray callbacks


class _StudySearcher(OptunaSearch):
    """Ray's OptunaSearch, plus what the study must keep: which driver asked each trial (so a
    resumed search can tell its dead trials from a live cooperating process's), the trial target
    of the whole study (asked atomically, so several drivers stop together at exactly the target),
    and why each failed trial failed (a lost one's configuration is asked again)."""

    # While the study is at its target and trials still run, Tune asks for a trial every step
    # (10 a second): look at the study at most this often.
    _WAIT_POLL_S = 1.0

    def __init__(self, *args: Any, target: int, owner: str, retry_lost_trials: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target, self._owner, self._retry_lost = target, owner, retry_lost_trials
        self._failed: set[str] = set()  # failed, not yet told: record_failure comes first
        self._waited_at = 0.0

    def suggest(self, trial_id: str):
        from autopeft.study import FULL, WAIT, ask_within_target

        if trial_id not in self._ot_trials:
            if time.monotonic() - self._waited_at < self._WAIT_POLL_S:
                return None
            ot_trial = ask_within_target(self._ot_study, self._target, self._owner)
            if ot_trial == FULL:
                return Searcher.FINISHED
            if ot_trial == WAIT:
                self._waited_at = time.monotonic()
                return None
            self._ot_trials[trial_id] = ot_trial
        config = super().suggest(trial_id)
        return {**config, "trial_number": self._ot_trials[trial_id].number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Ray calls this before the callbacks' on_trial_error, which alone read the error; a
        # failed trial's reason must be in the study before it is told FAIL (then it is frozen).
        if error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._failed.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def record_failure(self, trial_id: str, category: str) -> bool:
        """Record why ``trial_id`` failed, ask it again if it was lost, tell it FAIL; asked again?"""
        from autopeft.study import record_failure

        if trial_id not in self._failed:
            return False
        self._failed.discard(trial_id)
        try:
            return record_failure(self._ot_study, self._ot_trials[trial_id]._trial_id, category, self._retry_lost)
        finally:
            super().on_trial_complete(trial_id, error=True)


# What Ray adds to every reported result; the rest is the trial's own report.
_RAY_RESULT_KEYS = ("config", "time_", "timestamp", "pid", "date", "hostname", "iterations", "done",
                    "training_iteration", "trial_id", "experiment_tag", "checkpoint_dir_name", "should_checkpoint")


class _TrackingCallback(Callback):
    """Mirror Ray trial events into MLflow runs (and each failure's reason into the study)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.searcher: _StudySearcher | None = None
        self._dead_nodes: dict[str, set[str]] = {}  # per running trial: the nodes dead when it started
        self.asked_again: set[str] = set()  # lost trials whose configuration runs again (not progress)

    def on_trial_start(self, iteration, trials, trial, **info):
        from autopeft.cluster import dead_nodes
        from autopeft.tracking import flatten

        config = dict(trial.config)
        peft = config.pop("peft_config")
        number = config.pop("trial_number")
        params = flatten({k: v for k, v in config.items() if k != "training"})
        params.update({f"train/{k}": v for k, v in config.get("training", {}).items()})
        self.tracker.trial_started(trial.trial_id, number, params, peft)
        self._dead_nodes[trial.trial_id] = dead_nodes()  # to tell, if it is lost, whether its node died

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keep = {k: v for k, v in result.items() if not k.startswith(_RAY_RESULT_KEYS)}
        self.tracker.trial_result(trial.trial_id, keep)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._dead_nodes.pop(trial.trial_id, None)
        self.tracker.trial_finished(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        from autopeft.cluster import lost_with_node
        from autopeft.tracking import NODE_LOST, UNREACHABLE, WORKER_LOST, classify_failure

        error = _read_error(trial)
        if not self.tracker.has_run(trial.trial_id):  # died before it started (e.g. its node while placing it)
            self.on_trial_start(iteration, trials, trial)
        category, reason = classify_failure(error)
        if category == UNREACHABLE:  # Ray lost the trial's process and cannot say why yet
            node = lost_with_node(self._dead_nodes.get(trial.trial_id, set()))
            category = NODE_LOST if node else WORKER_LOST
            reason = (f"the Ray node running this trial died ({reason})" if node else
                      f"the trial's worker process died; its node lives ({reason})")
        self._dead_nodes.pop(trial.trial_id, None)
        asked_again = self.searcher.record_failure(trial.trial_id, category) if self.searcher else False
        if asked_again:
            self.asked_again.add(trial.trial_id)
        self.tracker.trial_finished(trial.trial_id, error=error, failure=(category, reason), asked_again=asked_again)


def _read_error(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    text = Path(path).read_text() if path and os.path.exists(path) else ""
    text = text or str(getattr(trial, "error_msg", "") or "trial failed (no error file)")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours its tracebacks


class _ProgressCallback(Callback):
    """A progress bar over trials with the best metric so far."""

    def __init__(self, total: int, metric_name: str, enabled: bool, done: int = 0,
                 asked_again: set[str] | None = None) -> None:
        self.total, self.metric_name, self.enabled, self.done = total, metric_name, enabled, done
        self.best: float | None = None
        self.failed = 0
        self.asked_again = asked_again if asked_again is not None else set()  # filled by _TrackingCallback

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.progress = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.description}"))
            self.progress.start()
            self.task = self.progress.add_task("starting", total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def _update(self, advance: int = 0) -> None:
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
        if trial.trial_id in self.asked_again:  # its retry will advance the bar
            return
        self.failed += 1
        self._update(advance=1)
