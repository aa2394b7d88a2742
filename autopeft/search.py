"""A search, in four phases: ``prepare`` (validate every input, before anything starts) →
``open_stores`` (the MLflow parent run and the Optuna study) → ``run_trials`` (Ray Tune) →
``finalize`` (release, the Pareto front, the report). ``run_search`` chains them.

Ray is imported only inside ``run_trials`` (through ``ray_glue``), so reading settings or
validating inputs does not start or configure Ray.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopeft.cluster import check_ray_address, check_resources, connect, on_cluster, trial_data_dir
from autopeft.config import TrainBudget
from autopeft.errors import ConfigError, DataError
from autopeft.fidelity import DEFAULT_REDUCTION_FACTOR, DEFAULT_RUNGS, expected_share, promotion_minimum, rung_fractions
from autopeft.objectives import DEFAULT_OBJECTIVES, METRIC, PEAK_MEMORY_MB, Objective, directions, resolve_objectives
from autopeft.results import SearchRecord
from autopeft.samplers import DEFAULT_SAMPLER, SAMPLERS, blind_trials, make_sampler
from autopeft.stores import check_database_url, sqlite_url
from autopeft.tasks.metrics import CHANCE_QUANTILE
from autopeft.trial import TrialContext


def _field_help(text: str) -> dict[str, Any]:
    return {"help": text}


# Successive halving, by kind as the CLI names it: of the stopping type, the same with a quota for
# trials that have not learned, of the promotion type.
SCHEDULER_KINDS = {"sh": "", "shq": " (blind quota)", "shp": " (promotion type)"}
HALVING = tuple(SCHEDULER_KINDS)
SCHEDULERS = ("fifo", *HALVING)
# A search bounded by --cpu-budget-s alone: a trial cap it does not reach first.
BUDGETED_NUM_SAMPLES = 1000
# What says when a search ends; --resume NAME may move it.
TARGET_FIELDS = ("num_samples", "cpu_budget_s", "full_trials")
# What makes two trials of one study comparable. Running an existing --name again with any of these
# changed would mix incomparable trials in one front (or, after a default changed, continue a
# search under a scheduler it was not started with), so it is refused; --resume NAME keeps them.
IDENTITY_FIELDS = ("model", "task", "space", "budget", "objectives", "seed", "sampler", "scheduler", "rungs",
                   "reduction_factor", "rung_confidence", "rank_check", "halve_warm_starts", "top_seeds", "limits")
# Successive halving: at equal CPU it ended with a larger full-fidelity front than full-budget GP on
# 8 of 9 seeds, and at the default size as good a front for about the same CPU
# (benchmarks/multifidelity.py; benchmarks/README.md, "Multi-fidelity").
DEFAULT_SCHEDULER = "sh"
# A search given no count and no CPU budget trains as much as this many full-budget trials do:
# that many trials under fifo, more and shorter ones under sh. (A count of trials would make
# halving's default search cheaper and its front one or two full-budget points.)
DEFAULT_FULL_TRIALS = 8


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search needs; the CLI fills it from flags (and takes its defaults from here)."""

    name: str = field(metadata=_field_help("search name: Optuna study, Ray experiment and MLflow parent run"))
    model: str = field(default="all-MiniLM-L6-v2", metadata=_field_help(
        "base model: the embedded default, a local folder or a Hub id"))
    task: str = field(default="sst2", metadata=_field_help("a shipped task or a task YAML path"))
    space: str = field(default="autopeft", metadata=_field_help("a shipped search space or a YAML path"))
    budget: TrainBudget = field(default_factory=TrainBudget)
    num_samples: int | None = field(default=None, metadata=_field_help(
        "number of trials (the most trials, with --full-trials or --cpu-budget-s). Default: set by "
        "--full-trials under fifo; under sh, as many as --full-trials could pay for at the lowest rung; "
        f"with --cpu-budget-s, {BUDGETED_NUM_SAMPLES}"))
    full_trials: float | None = field(default=None, metadata=_field_help(
        "the search's size in full-budget trials: it ends when its trials have trained, together, as much "
        "as this many trials at the full budget (under fifo: this many trials; under sh a trial stopped at "
        "a rung counts that rung's share of the budget, so more, shorter trials run; with --top-seeds N a "
        "trial at the full budget counts N). "
        f"Default: {DEFAULT_FULL_TRIALS} when neither --num-samples nor --cpu-budget-s is given"))
    cpu_budget_s: float | None = field(default=None, metadata=_field_help(
        "CPU-seconds the trials may use in all (each trial's process: building, training, scoring, measuring; "
        "summed over trials). No trial starts that is not expected to fit, at the mean cost of the trials so far"))
    max_concurrent_trials: int = field(default=2, metadata=_field_help("trials run at once"))
    cpus_per_trial: float = field(default=1.0, metadata=_field_help("CPUs reserved per trial (its torch thread count)"))
    gpus_per_trial: float = field(default=0.0, metadata=_field_help("GPUs reserved per trial"))
    sampler: str = field(default=DEFAULT_SAMPLER, metadata=_field_help("Optuna sampler"))
    objectives: tuple[str, ...] = field(default=DEFAULT_OBJECTIVES, metadata=_field_help(
        "objective keys the search optimises, the task metric first"))
    seed: int = field(default=0, metadata=_field_help("seed of the sampler and of every trial's training"))
    data_dir: str | None = None
    workdir: str = field(default="autopeft_runs", metadata=_field_help(
        "where the Optuna study (SQLite) and Ray results go"))
    storage: str | None = field(default=None, metadata=_field_help(
        "Optuna storage URL (default sqlite:///<workdir>/optuna.db)"))
    tracking_uri: str | None = None
    experiment: str = field(default="autopeft", metadata=_field_help("MLflow experiment"))
    ray_address: str | None = None
    trial_memory_limit_mb: float | None = field(default=None, metadata=_field_help(
        "fail a trial whose peak training memory passes this many MB"))
    retry_lost_trials: int = field(default=1, metadata=_field_help(
        "ask a configuration again, up to this many times, when its trial dies with its Ray node or worker "
        "process (0: count it as failed)"))
    scheduler: str = field(default=DEFAULT_SCHEDULER, metadata=_field_help(
        "trial scheduler. fifo: every trial gets the full budget; sh: multi-objective successive halving (rungs over "
        "training steps and scored rows; a trial goes on past a rung only if in the Pareto-ranked top 1/eta of the "
        "trials that reached it so far, decided as it arrives); shq: sh, except that trials which have not learned at "
        "a rung go on only into the places of its top 1/eta that learned trials leave free (sh lets each on while "
        "learned trials do not fill the quota); shp: sh of the promotion type (every trial "
        "stops at its rung with its training state kept on disk under --workdir, and one that ranks in the top "
        "floor(n/eta) of its rung is resumed later; a rung where no trial has learned lets only that share on)"))
    rungs: int = field(default=DEFAULT_RUNGS, metadata=_field_help(
        "successive halving: number of rungs; the lowest gets 1/eta**(rungs-1) of the budget"))
    reduction_factor: int = field(default=DEFAULT_REDUCTION_FACTOR, metadata=_field_help(
        "successive halving: eta, each rung keeps the top 1/eta and gives it eta times the budget"))
    rung_confidence: float = field(default=CHANCE_QUANTILE, metadata=_field_help(
        "successive halving: how sure a rung must be that a trial has learned before ranking it on its metric. Its "
        "metric must beat a constant prediction's and what a guesser that knows only the labels' distribution "
        "scores in this share of tries; trials that have not rank after those that have (0: beating a constant "
        "prediction suffices)"))
    rank_check: bool = field(default=False, metadata=_field_help(
        "successive halving: once the next rung's order of the trials a rung promoted agrees with that rung's weakly "
        "and surely (8+ of them; the 95% upper bound of their Spearman at most 0.3), let every trial on past that "
        "rung (shp resumes those it held back): its stops were about at random, so there the rest of the search "
        "runs as fifo would"))
    halve_warm_starts: bool = field(default=False, metadata=_field_help(
        "successive halving: rank the space's warm starts at each rung like any trial, so they may stop early "
        "(default: they always go on to the full budget, first, as the hand-picked references the front is read "
        "against)"))
    top_seeds: int = field(default=1, metadata=_field_help(
        "seeds each config is trained with at the full budget (the top rung under sh); its metric is their "
        "mean and the spread is reported (metric_std, metric_min, metric_seed<i>); --full-trials counts each seed"))
    reuse_workers: bool | None = field(default=None, metadata=_field_help(
        "run trials one after another in the same worker processes (model code imported and data read once); "
        "default: yes, unless peak_memory_mb is an objective on CPU, where a fresh process measures it best"))
    limits: dict[str, float] = field(default_factory=dict, metadata=_field_help(
        "constraints the sampler is told (max_params, max_memory, ...: an objective's limit name -> bound)"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        full = self.full_trials
        if full is None and self.num_samples is None and self.cpu_budget_s is None:
            full = DEFAULT_FULL_TRIALS
        if full is not None and full > 0 and self.scheduler not in HALVING:
            if self.num_samples is None:
                object.__setattr__(self, "num_samples", math.ceil(full / self.top_seeds))
            if self.top_seeds == 1:  # every trial is one full training: the count says it
                full = None
        object.__setattr__(self, "full_trials", full)
        if self.num_samples is None:
            object.__setattr__(self, "num_samples", BUDGETED_NUM_SAMPLES if full is None else self._most_trials(full))

    def _most_trials(self, full_trials: float) -> int:
        """A cap that only trials which train nothing (failed early, or duplicates answered from the
        study) let a search reach: what ``full_trials`` pays for at the lowest rung's share."""
        if self.rungs < 2 or self.reduction_factor < 2:  # refused in prepare, with the flag's name
            return BUDGETED_NUM_SAMPLES
        return math.ceil(full_trials / rung_fractions(self.rungs, self.reduction_factor)[0])

    def planned_trials(self) -> int:
        """The trials a sampler is sized for (its random start-up phase, NSGA-II's population):
        the count, or under --full-trials what that many full trials buy at halving's expected
        share per trial (an upper estimate; the GP sampler re-plans from the trials' real cost)."""
        if self.full_trials is None or self.rungs < 2 or self.reduction_factor < 2:
            return self.num_samples
        return min(self.num_samples, math.ceil(self.full_trials / expected_share(self.rungs, self.reduction_factor)))

    def objective_entries(self) -> dict[str, Objective]:
        return resolve_objectives(self.objectives)

    def storage_url(self) -> str:
        return self.storage or sqlite_url(Path(self.workdir) / "optuna.db")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "budget": self.budget.to_dict(), "objectives": list(self.objectives)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSettings":
        from autopeft.config import dataclass_from_dict

        data = dict(data)
        if "memory_objective" in data:  # settings stored by searches before objectives were a list
            data["objectives"] = DEFAULT_OBJECTIVES + ((PEAK_MEMORY_MB,) if data.pop("memory_objective") else ())
        data.setdefault("scheduler", "fifo")  # stored before schedulers existed: every trial ran at the full budget
        data.setdefault("rung_confidence", 0.0)  # stored before it existed: a rung's floor was the constant prediction
        data.setdefault("rank_check", False)  # stored before it existed
        # Stored before it existed: under halving, warm starts were ranked like any trial.
        data.setdefault("halve_warm_starts", data["scheduler"] in HALVING)
        return dataclass_from_dict(cls, {**data, "budget": TrainBudget.from_dict(data["budget"])}, "search settings")

    def replace(self, **changes: Any) -> "SearchSettings":
        return dataclasses.replace(self, **changes)


def default_name(task: str, space: str) -> str:
    return f"{Path(task).stem}-{Path(space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------- phase 1: prepare


@dataclass
class Prepared:
    """What validation produced: resolved inputs, ready to hand to Ray."""

    settings: SearchSettings
    task: Any
    space: Any
    model: Any
    objectives: dict[str, Objective]
    context: TrialContext
    notes: list[str] = field(default_factory=list)  # what the user should know before trials start


def prepare(settings: SearchSettings) -> Prepared:
    """Validate every input before anything starts; raises AutopeftError subclasses."""
    from autopeft.models import inspect_model
    from autopeft.spaces import load_space
    from autopeft.tasks import load_splits, load_task, resolve_data_dir
    from autopeft.tracking import check_reachable, resolve_tracking_uri

    check_ray_address(settings.ray_address)
    if settings.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {settings.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if settings.full_trials is not None and not settings.full_trials > 0:
        raise ConfigError(f"--full-trials must be positive, got {settings.full_trials:g}")
    if settings.num_samples < 1 or settings.max_concurrent_trials < 1:
        raise ConfigError("--num-samples and --max-concurrent-trials must be at least 1")
    if settings.cpu_budget_s is not None and not settings.cpu_budget_s > 0:
        raise ConfigError(f"--cpu-budget-s must be positive, got {settings.cpu_budget_s}")
    if settings.trial_memory_limit_mb is not None and settings.trial_memory_limit_mb <= 0:
        raise ConfigError("--trial-memory-limit-mb must be positive")
    if settings.retry_lost_trials < 0:
        raise ConfigError(f"--retry-lost-trials must be 0 or more, got {settings.retry_lost_trials}")
    from autopeft.heartbeat import interval_s
    interval_s()  # a malformed AUTOPEFT_HEARTBEAT_S fails here, not in the driver's thread
    if settings.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {settings.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if settings.top_seeds < 1:
        raise ConfigError(f"--top-seeds must be at least 1, got {settings.top_seeds}")
    if settings.rungs < 2 or settings.reduction_factor < 2:
        raise ConfigError(f"--rungs and --reduction-factor must be at least 2, got {settings.rungs} and "
                          f"{settings.reduction_factor}")
    if not 0 <= settings.rung_confidence < 1:
        raise ConfigError(f"--rung-confidence must be at least 0 and below 1, got {settings.rung_confidence}")
    if settings.rank_check and settings.scheduler not in HALVING:
        raise ConfigError(f"--rank-check opens rungs of successive halving, and --scheduler {settings.scheduler} has "
                          f"none; use --scheduler {' / '.join(HALVING)} or drop --rank-check")
    if settings.halve_warm_starts and settings.scheduler not in HALVING:
        raise ConfigError(f"--halve-warm-starts ranks warm starts at the rungs of successive halving, and --scheduler "
                          f"{settings.scheduler} has none; use --scheduler {' / '.join(HALVING)} or drop it")
    _check_promotion_budget(settings)
    objectives = settings.objective_entries()
    limit_objectives(settings.limits)
    check_database_url(settings.storage_url(), "--storage")
    check_reachable(resolve_tracking_uri(settings.tracking_uri))
    task = load_task(settings.task)
    space = load_space(settings.space)
    model = inspect_model(settings.model)
    space.check_model(model.num_layers)
    notes: list[str] = []
    unsteered = blind_trials(settings.sampler, settings.num_samples, settings.max_concurrent_trials)
    if unsteered:
        blind, startup = unsteered
        # A CPU budget or a size in full trials leaves num_samples a cap, not the search's length.
        counted = settings.cpu_budget_s is None and settings.full_trials is None
        of = f" of the {settings.num_samples}" if counted else ""
        notes.append(f"with {settings.max_concurrent_trials} trials at a time, about {blind}{of} "
                     f"trials start before the {settings.sampler} sampler has the results of its "
                     f"{startup} start-up trials, so they are not steered by any result; "
                     "fewer --max-concurrent-trials or more --num-samples leave it more to steer")
    try:
        data_dir = resolve_data_dir(settings.data_dir)
        b = settings.budget  # the trials' splits, holdout included: fail now, not in every trial
        splits = load_splits(task, data_dir, b.select_on, b.holdout_size, b.holdout_seed)
        _check_rungs(settings, splits.train)
    except DataError as exc:
        if not on_cluster(settings.ray_address):
            raise
        # The driver of a cluster search may hold no data: the workers resolve their own.
        data_dir = None
        notes.append(f"the data was not checked here (the workers resolve it): {exc}")
    ctx = TrialContext(_model_ref(settings.model), _task_ref(task, settings.task), settings.budget,
                       trial_data_dir(settings.data_dir, data_dir, settings.ray_address),
                       settings.trial_memory_limit_mb, *_rung_context(settings, objectives), settings.top_seeds,
                       settings.rung_confidence, states_dir(settings))
    return Prepared(settings, task, space, model, objectives, ctx, notes)


def _check_rungs(settings: SearchSettings, train: Any) -> None:
    """Each rung needs a step of its own; a budget of fewer steps than rungs is refused here, not
    in every trial (a space that samples the batch size may still shorten some trials)."""
    if settings.scheduler not in HALVING:
        return
    total = settings.budget.total_steps(len(train))
    if total < settings.rungs:
        raise ConfigError(f"--rungs {settings.rungs} needs at least {settings.rungs} training steps, and the budget "
                          f"gives {total}; lower --rungs, raise --train-examples / --epochs, or use --scheduler fifo")


def _check_promotion_budget(settings: SearchSettings) -> None:
    """Under shp a configuration reaches the full budget only once eta**(rungs-1) trials have
    reached rung 0 (promotion_minimum): a smaller budget ends with no full-fidelity trial, so no
    front. Refused here rather than found out after the search (a CPU budget cannot be checked)."""
    if settings.scheduler != "shp":
        return
    worth, trials = promotion_minimum(settings.rungs, settings.reduction_factor)
    short = (f"--full-trials {settings.full_trials:g}" if settings.full_trials is not None and settings.full_trials < worth
             else f"--num-samples {settings.num_samples}" if settings.full_trials is None and settings.cpu_budget_s is None
             and settings.num_samples < trials else None)
    if short:
        raise ConfigError(f"--scheduler shp brings its first configuration to the full budget after {trials} trials "
                          f"({worth:.2f} full trials' worth, with {settings.rungs} rungs and eta "
                          f"{settings.reduction_factor}); {short} ends before that, with no front: raise it, lower "
                          f"--rungs / --reduction-factor, or use --scheduler sh")


def _rung_context(settings: SearchSettings, objectives: dict[str, Objective]) -> tuple[tuple[float, ...], tuple[str, ...]]:
    if settings.scheduler not in HALVING:
        return (), ()
    return rung_fractions(settings.rungs, settings.reduction_factor), tuple(objectives)


def limit_objectives(limits: dict[str, float]) -> dict[str, tuple[Objective, float]]:
    """Search constraints by objective key: ``{"max_params": 5e4}`` -> ``{"trainable_params": (obj, 5e4)}``."""
    from autopeft.objectives import available_objectives

    known = {o.limit: o for o in available_objectives().values() if o.limit}
    unknown = sorted(set(limits) - set(known))
    if unknown:
        raise ConfigError(f"unknown constraint(s) {unknown}; known: {', '.join(sorted(known))}")
    out = {}
    for name, bound in limits.items():
        if known[name].direction == "min" and not float(bound) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {bound}")
        out[known[name].key] = (known[name], float(bound))
    return out


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


# ---------------------------------------------------------------------------- phase 2: open stores


@dataclass
class Stores:
    """The two records a search writes: the MLflow parent run (tracker) and the Optuna study."""

    tracker: Any  # tracking.SearchTracker
    storage: Any  # optuna.storages.RDBStorage
    study: Any  # optuna.Study
    sampler: Any
    owner: str  # this driver process, as stamped on the trials it asks
    heartbeat: Any  # heartbeat.Heartbeat: beats for this driver's trials, reclaims dead drivers'


def open_stores(prep: Prepared) -> Stores:
    """Create or reopen the search's parent run and study; mark what a dead driver left running.

    A study seen for the first time records its settings (so ``--resume NAME`` needs nothing else)
    and enqueues the space's warm-start points.
    """
    import optuna

    from autopeft import schema
    from autopeft import study as studies
    from autopeft.heartbeat import Heartbeat
    from autopeft.tracking import SearchTracker

    settings = prep.settings
    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(settings.storage_url())
    stored = studies.find_settings(storage, settings.name)
    if stored is not None:  # before the MLflow parent run is reopened: a refusal leaves nothing behind
        check_same_search(settings, stored)
    tracker = SearchTracker(settings.tracking_uri, settings.experiment, settings.name, {
        "model": settings.model, "task": prep.task.name, "space": settings.space, "sampler": settings.sampler,
        "num_samples": settings.num_samples,
        **({"cpu_budget_s": settings.cpu_budget_s} if settings.cpu_budget_s is not None else {}),
        **({"full_trials": settings.full_trials} if settings.full_trials is not None else {}),
        schema.OBJECTIVES_PARAM: ",".join(prep.objectives),
        "seed": settings.seed, **{f"{schema.BUDGET_PREFIX}{k}": v for k, v in settings.budget.to_dict().items()},
        "scheduler": settings.scheduler, "top_seeds": settings.top_seeds,
        **({"rungs": settings.rungs, "reduction_factor": settings.reduction_factor, "rank_check": settings.rank_check,
            "halve_warm_starts": settings.halve_warm_starts} if settings.scheduler in HALVING else {}),
        **{f"limit/{k}": v for k, v in settings.limits.items()},
        schema.TASK_REF_PARAM: prep.context.task,
    }, tags={schema.TASK_TAG: prep.task.name, schema.MODEL_TAG: settings.model,
             schema.METRIC_NAME_TAG: prep.task.primary_metric, schema.EVAL_SPLIT_TAG: settings.budget.select_on})

    asked = 0 if stored is None else len(
        storage.get_all_trials(storage.get_study_id_from_name(settings.name), deepcopy=False))
    sampler = make_sampler(settings.sampler, settings.seed, settings.planned_trials(), asked)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=settings.name, sampler=sampler, load_if_exists=True,
                                directions=["maximize" if o.direction == "max" else "minimize"
                                            for o in prep.objectives.values()])
    # Objective names for optuna-dashboard and study.trials_dataframe(): the task metric's own name.
    with warnings.catch_warnings():  # experimental since Optuna 3.2 and unchanged since: not news to users
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([prep.task.primary_metric if k == METRIC else k for k in prep.objectives])
    if stored is None:  # new: record how to resume it, warm-start it
        study.set_user_attr(studies.SETTINGS_ATTR, settings.to_dict())
        for i, point in enumerate(prep.space.warm_start_points(prep.model.num_layers)):
            study.enqueue_trial(point, user_attrs={studies.WARM_START_ATTR: i}, skip_if_exists=True)
    elif {k: stored.get(k) for k in TARGET_FIELDS} != {k: getattr(settings, k) for k in TARGET_FIELDS}:
        # Continued with a new target (--resume NAME --num-samples / --cpu-budget-s): later resumes
        # and drivers joining it read the target from here. MLflow's parent params keep the first.
        study.set_user_attr(studies.SETTINGS_ATTR, {**stored, **{k: getattr(settings, k) for k in TARGET_FIELDS}})
    owner = studies.this_process()
    # Reclaims dead drivers' trials now (resume, joining) and at every beat while this one runs.
    heartbeat = Heartbeat(study, settings.storage_url(), owner, on_reclaimed=tracker.mark_interrupted)
    heartbeat.reclaim()
    # A driver killed between telling the study a trial's end and recording it in MLflow left its run RUNNING.
    tracker.close_ended(studies.ends_of_gone_drivers(study))
    return Stores(tracker, storage, study, sampler, owner, heartbeat)


def check_same_search(settings: SearchSettings, stored: dict[str, Any]) -> None:
    """Refuse to continue the study ``settings.name`` with settings that make its trials another
    experiment (IDENTITY_FIELDS); the target may change freely."""
    started = SearchSettings.from_dict(stored).to_dict()
    asked = settings.to_dict()
    changed = []
    for key in IDENTITY_FIELDS:
        if key == "budget":
            changed += [(f"budget.{k}", started[key].get(k), v) for k, v in asked[key].items()
                        if started[key].get(k) != v]
        elif started[key] != asked[key]:
            changed.append((key, started[key], asked[key]))
    if changed:
        what = "; ".join(f"{key} {old!r}, not {new!r}" for key, old, new in changed)
        raise ConfigError(
            f"search {settings.name!r} already exists with other settings ({what}): continue it with "
            f"--resume {settings.name}, which keeps its own settings, or start a new search under another --name")


# ---------------------------------------------------------------------------- phase 3: run trials


def run_trials(prep: Prepared, stores: Stores, show_progress: bool = True) -> None:
    """Ask, run and record trials under Ray Tune until the study holds ``num_samples`` of them or
    its trials have spent ``cpu_budget_s``."""
    import ray
    from ray import tune

    from autopeft import ray_glue
    from autopeft.run_states import RunStates
    from autopeft.study import counted, cpu_spent, target_reached, trainings_spent, worth_waiting_for
    from autopeft.trial import ray_trainable

    settings = prep.settings
    trials = stores.study.get_trials(deepcopy=False)
    # A study already at its target may still hold another driver's running trials: if that driver
    # dies (another host: known only after the heartbeat grace), its trials are asked again, and
    # this driver, having joined, must be the one still asking.
    if (target_reached(trials, settings.num_samples, settings.cpu_budget_s, settings.full_trials)
            and not worth_waiting_for(trials)):
        return
    done = len(counted(trials))
    started_ray = False
    tracking = ray_glue.TrackingCallback(stores.tracker)
    progress = ray_glue.ProgressCallback(settings.num_samples, prep.task.primary_metric, show_progress, done,
                                         tracking.asked_again, settings.cpu_budget_s, cpu_spent(trials),
                                         tracking.failed_cpu, settings.full_trials, trainings_spent(trials))
    try:
        if not ray.is_initialized():
            connect(settings.ray_address)
            started_ray = True
        ledger = _ledger(prep, stores)  # one for the scheduler (records rungs) and the searcher (promotes)
        searcher = ray_glue.StudySearcher(
            space=prep.space.define_by_run(prep.model.num_layers), metric=list(prep.objectives),
            mode=list(directions(prep.objectives).values()), sampler=stores.sampler, storage=stores.storage,
            study_name=settings.name, seed=settings.seed, target=settings.num_samples, owner=stores.owner,
            retry_lost_trials=settings.retry_lost_trials, cpu_budget_s=settings.cpu_budget_s,
            full_trials=settings.full_trials, limits=limit_objectives(settings.limits), vetting=_vetting(prep),
            on_reuse=stores.tracker.trial_reused,
            promotions=(ledger, RunStates(prep.context.states_dir)) if prep.context.states_dir else None)
        tracking.searcher = searcher  # records each failure in the study, with its reason
        trainable = tune.with_resources(
            tune.with_parameters(ray_trainable, context=prep.context.to_dict()),
            {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            # Unbounded: the searcher ends the search at the study's target (trials asked again, by
            # this driver or a cooperating one, and duplicates answered without Ray, need samples
            # beyond `remaining`).
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(prep, ledger), num_samples=-1,
                                        reuse_actors=reuse_workers(settings),
                                        max_concurrent_trials=settings.max_concurrent_trials,
                                        trial_dirname_creator=ray_glue.trial_dirname),
            run_config=tune.RunConfig(
                name=settings.name, storage_path=str((Path(settings.workdir) / "ray").resolve()),
                callbacks=[tracking, progress], verbose=0,
                failure_config=tune.FailureConfig(max_failures=0)),
        )
        check_resources(settings.cpus_per_trial, settings.gpus_per_trial)
        with progress, stores.heartbeat:
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()  # stops this driver's trials before finalize marks them


def reuse_workers(settings: SearchSettings) -> bool:
    """Whether trials reuse worker processes (Ray actor reuse): the fixed cost of a trial falls
    from process start + imports + data loading to building the model. On CPU the peak-memory
    figure is RSS, which a reused process inflates with what the allocator kept, so a search that
    optimises memory on CPU keeps one process per trial unless told otherwise."""
    if settings.reuse_workers is not None:
        return settings.reuse_workers
    return settings.gpus_per_trial > 0 or PEAK_MEMORY_MB not in settings.objectives


def _vetting(prep: Prepared) -> Any:
    """Duplicates answered from the study; configs below the space's minimum size refused."""
    from autopeft.reuse import Vetting

    def count(peft: Any) -> int:
        from autopeft.build import count_trainable_params  # imports adapters: only when a space asks

        return count_trainable_params(prep.settings.model, peft, prep.task.num_labels, prep.model)
    return Vetting(prep.settings.budget, prep.space.min_peft_params, count)


def _ledger(prep: Prepared, stores: Stores) -> Any:
    """Successive halving's rung ledger, seeded with the rungs the study already holds; None under fifo."""
    if prep.settings.scheduler not in HALVING:
        return None
    from autopeft.fidelity import RungLedger
    from autopeft.study import WARM_START_ATTR, rung_values

    ledger = RungLedger(prep.objectives, prep.settings.rungs, prep.settings.reduction_factor,
                        blind_quota=prep.settings.scheduler == "shq", rank_check=prep.settings.rank_check)
    trials = stores.study.get_trials(deepcopy=False)
    if not prep.settings.halve_warm_starts:  # the scheduler marks the rest as their reports arrive
        ledger.references.update(str(t.number) for t in trials if WARM_START_ATTR in t.user_attrs)
    for number, rung, values in rung_values(trials):
        ledger.record(str(number), rung, values)
    return ledger


def _study_trials(settings: SearchSettings) -> list[Any]:
    import optuna

    from autopeft.study import open_storage

    return optuna.load_study(study_name=settings.name, storage=open_storage(settings.storage_url())).get_trials(
        deepcopy=False)


def rung_notes(settings: SearchSettings) -> list[str]:
    """What the end of a halving search says about its rungs (``blind_rungs``, ``rate_biased_rungs``,
    ``disagreeing_rungs``), from one read of the study."""
    if settings.scheduler not in HALVING:
        return []
    trials = _study_trials(settings)
    return blind_rungs(settings, trials) + rate_biased_rungs(settings, trials) + disagreeing_rungs(settings, trials)


def blind_rungs(settings: SearchSettings, trials: list[Any] | None = None) -> list[str]:
    """One line for each rung below the top where most runs scored no better than chance
    (``RungLedger.has_learned``): such a rung could not tell its trials apart, so it stopped them
    for their size or not at all, and its share of the budget bought no decision. Measured: rung 0
    of the default search on SST-2 (1/9 of 2,048 examples) saw nothing in any of its 11 trials."""
    if settings.scheduler not in HALVING:
        return []
    from autopeft.fidelity import RungLedger
    from autopeft.study import rung_values

    learned: dict[tuple[int, int], bool] = {}
    for run, rung, values in rung_values(_study_trials(settings) if trials is None else trials):
        learned[(run, rung)] = RungLedger.has_learned(values)
    fractions = rung_fractions(settings.rungs, settings.reduction_factor)
    lines = []
    for rung in range(settings.rungs - 1):
        there = [ok for (_, r), ok in learned.items() if r == rung]
        if there and there.count(False) > len(there) / 2:
            lines.append(f"rung {rung} (1/{round(1 / fractions[rung])} of the budget): {there.count(False)} of {len(there)} "
                         "trials scored no better than chance there, so it could rank only the rest; for a lowest "
                         "rung that learns, use fewer --rungs or more training (--train-examples, --epochs)")
    return lines


def rate_biased_rungs(settings: SearchSettings, trials: list[Any] | None = None) -> list[str]:
    """One line for each rung below the top that ranked the trials by their learning rate while the
    full budget did not (``fidelity.rate_bias``): there halving chose fast rates, not configurations.
    Nothing where the space does not search the rate."""
    if settings.scheduler not in HALVING:
        return []
    from autopeft.fidelity import rate_bias
    from autopeft.spaces import training_param
    from autopeft.study import CONTINUES_ATTR, rung_values

    rate = training_param("learning_rate")
    trials = _study_trials(settings) if trials is None else trials
    rates = {t.number: t.params[rate] for t in trials
             if rate in t.params and CONTINUES_ATTR not in t.user_attrs}  # a run's rate: its first trial's
    by_rung: dict[int, list[tuple[float, float]]] = {}
    for run, rung, values in rung_values(trials):
        metric = values.get(METRIC)
        if run in rates and metric is not None and math.isfinite(float(metric)):
            by_rung.setdefault(rung, []).append((rates[run], float(metric)))
    fractions = rung_fractions(settings.rungs, settings.reduction_factor)
    lines = []
    for rung in range(settings.rungs - 1):
        bias = rate_bias(by_rung.get(rung, []), by_rung.get(settings.rungs - 1, []))
        if bias:
            lines.append(f"rung {rung} (1/{round(1 / fractions[rung])} of the budget) ranked its trials by learning "
                         f"rate (Spearman {bias[0]:.2f} over {len(by_rung[rung])}) while the full budget did not "
                         f"({bias[1]:+.2f} over {len(by_rung[settings.rungs - 1])}): short training favours fast rates "
                         "that need not hold, so halving chose by rate there; use fewer --rungs, more training, or a "
                         "narrower learning-rate range in the space")
    return lines


def disagreeing_rungs(settings: SearchSettings, trials: list[Any] | None = None) -> list[str]:
    """One line for each rung below the top whose ranking of the runs it promoted the next rung
    did not keep (``fidelity.rank_disagreement``): there halving stopped trials about at random."""
    if settings.scheduler not in HALVING:
        return []
    from autopeft.fidelity import rank_disagreement
    from autopeft.study import rung_values

    metrics: dict[tuple[int, int], float] = {}
    for run, rung, values in rung_values(_study_trials(settings) if trials is None else trials):
        metric = values.get(METRIC)
        if metric is not None and math.isfinite(float(metric)):
            metrics[(run, rung)] = float(metric)
    fractions = rung_fractions(settings.rungs, settings.reduction_factor)
    lines = []
    for rung in range(settings.rungs - 1):
        pairs = [(m, metrics[(run, rung + 1)]) for (run, r), m in metrics.items() if r == rung and (run, rung + 1) in metrics]
        rho = rank_disagreement(pairs)
        if rho is not None:
            lines.append(f"rung {rung} (1/{round(1 / fractions[rung])} of the budget) ranked the {len(pairs)} trials it "
                         f"promoted unlike rung {rung + 1} did (Spearman {rho:+.2f}), so its stops were about at random"
                         + (" (--rank-check let every trial on past it once it saw that)" if settings.rank_check else
                            " and halving gained there only by trying more configurations, which side by side won "
                            "on some tasks and lost on others (benchmarks/README.md); compare --scheduler fifo or "
                            "--rank-check on this task and space, or use fewer --rungs or more training"))
    return lines


def _scheduler(prep: Prepared, ledger: Any) -> Any:
    """None (Ray's FIFO) or successive halving over ``ledger``."""
    if ledger is None:
        return None
    from autopeft.scheduler import ParetoHalvingScheduler

    return ParetoHalvingScheduler(ledger, promotion=prep.settings.scheduler == "shp",
                                  keep_warm_starts=not prep.settings.halve_warm_starts)


def states_dir(settings: SearchSettings) -> str | None:
    """Where a promotion-type search keeps its stopped runs' training states (run_states.py)."""
    return str((Path(settings.workdir) / "states" / settings.name).resolve()) if settings.scheduler == "shp" else None


# ---------------------------------------------------------------------------- phase 4: finalize


def finalize(prep: Prepared, stores: Stores, status: str) -> SearchRecord:
    """Release this driver's unfinished trials, log the front and report, close the parent run."""
    from autopeft import study as studies

    tracker = stores.tracker
    tracker.mark_interrupted([t.number for t in studies.reconcile(stores.study, owners_to_release={stores.owner})])
    tracker.close_ended(studies.ends_of_gone_drivers(stores.study, released={stores.owner}))
    record = SearchRecord(prep.settings.name, tracker.parent_id, tracker.uri, tracker.experiment_id,
                          prep.settings.model, prep.task.name, prep.task.primary_metric, prep.objectives,
                          prep.settings.budget.to_dict(), tracker.trial_records())
    if record.trials:
        tracker.log_front(record.trials, record.metric_name, list(record.objectives))
        _log_report(tracker, record)
    tracker.finish(status=status)
    return record


def _log_report(tracker: Any, record: SearchRecord) -> None:
    """The interactive Pareto report on the parent run; a plotting failure must not lose the search."""
    from autopeft.report import log_report

    try:
        log_report(record, f"Pareto report: {tracker.search_name}")
    except Exception as exc:  # noqa: BLE001 - the CSV/PNG front is already logged
        warnings.warn(f"could not write the Pareto HTML report: {exc}")


def run_search(settings: SearchSettings, show_progress: bool = True,
               prepared: Prepared | None = None) -> SearchRecord:
    """Run (or continue) the search ``settings.name`` until its study holds ``num_samples`` trials
    or its trials have spent ``cpu_budget_s``.

    Re-running with the same name continues it: finished trials stay, trials a dead driver left
    running are marked interrupted and asked again, the MLflow parent run is reused. Another
    process running the same name on the same storage cooperates on the same study.
    """
    prep = prepared or prepare(settings)
    stores = open_stores(prep)
    status = "FINISHED"
    try:
        run_trials(prep, stores, show_progress)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        record = finalize(prep, stores, status)
    return record
