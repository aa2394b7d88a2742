"""The tracking schema: every MLflow tag, param and artifact name autopeft writes, and the typed
trial record read back from a trial run. The writer (``tracking.SearchTracker``, ``finetune``)
and every reader (``results``, the CLI, the report, benchmarks) share these names, so a renamed
tag is one edit here.

Runs of a search, in one MLflow experiment:
- parent run (``autopeft.kind=search``): params ``model``, ``task``, ``space``, ``sampler``,
  ``objectives`` (comma-separated keys), ``budget/<field>``, ``task_ref``; tags ``autopeft.search``,
  ``autopeft.model``, ``autopeft.task``, ``autopeft.metric_name``; artifacts under ``pareto/``.
- trial run (``autopeft.kind=trial``, nested): sampled params (``train/<field>`` for training
  settings), one metric per report number (objectives included), tags ``autopeft.trial``,
  ``autopeft.trial_number``, ``autopeft.peft``, ``autopeft.<RESULT_TAGS>``, and on failure
  ``autopeft.failure`` / ``autopeft.error`` plus ``traceback.txt``. Under successive halving each
  rung's report is logged at step = rung, tags ``autopeft.rung`` / ``autopeft.fidelity`` hold
  the highest rung reached, and a trial stopped below the top rung is FINISHED with
  ``autopeft.stopped_at_rung``. A duplicate configuration is not trained: its run copies the
  earlier trial's params, metrics and configuration and carries ``autopeft.reuse_of``. Under
  halving of the promotion type a trial that resumes a stopped run has params ``resume_of`` (the
  run's first trial number) and ``resume_rung`` (the rung it went on from). A trial that evaluates
  one of the space's warm-start points has param ``warm_start`` (its index there).
- train run (``autopeft.kind=train``): ``autopeft train``, nested under the search it came from.
- hand-picks run (``autopeft.kind=hand_picks``): ``autopeft hand-picks``, nested under its search:
  metrics ``trial<N>/dev_mean`` and ``trial<N>/dev_std`` per retrained trial, tag
  ``autopeft.hand_pick.<I>`` with warm start I's outcome, artifact ``hand_picks.csv`` (a row per run).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# ----------------------------------------------------------------------------- tags
KIND_TAG = "autopeft.kind"
KIND_SEARCH, KIND_TRIAL, KIND_TRAIN, KIND_HAND_PICKS = "search", "trial", "train", "hand_picks"
HAND_PICK_TAG = "autopeft.hand_pick."  # hand-picks run: + warm start index -> its retrained outcome
HAND_PICKS_ARTIFACT = "hand_picks.csv"
SEARCH_TAG = "autopeft.search"  # parent, trial and train runs: the search name
TRIAL_TAG = "autopeft.trial"  # trial run: Ray's trial id
TRIAL_NUMBER_TAG = "autopeft.trial_number"  # trial run: the Optuna trial number (unique per search)
PEFT_TAG = "autopeft.peft"  # the configuration, compact (seq_bn[0,1]x24 + ...)
PEFT_WORDS_TAG = "autopeft.peft_words"  # trial run: the configuration in words (the report's table)
FORM_TAG = "autopeft.form"  # train run: how its output folder holds the model (peft | adapters | full)
MODEL_TAG = "autopeft.model"
TASK_TAG = "autopeft.task"
METRIC_NAME_TAG = "autopeft.metric_name"  # the task metric that the ``metric`` objective is
FAILURE_TAG = "autopeft.failure"  # failed trial run: one of FAILURES
ERROR_TAG = "autopeft.error"  # failed trial run: the reason, one line
ASKED_AGAIN_TAG = "autopeft.asked_again"  # lost trial run: "true" when its configuration was asked again
SOURCE_RUN_TAG = "autopeft.source_run_id"  # train run: the trial run its config was exported from
EVAL_SPLIT_TAG = "autopeft.eval_split"  # "dev" | "holdout": the split a run's metrics are on
SELECT_SPLIT_TAG = "autopeft.select_split"  # train run: the split its best epoch was chosen on
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
# MLflow 3's UI opens a model-training experiment on its runs (otherwise on the GenAI traces overview).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Successive halving: report keys (rung reached, rungs in all, share of the full budget) and
# the tag a trial stopped below the top rung carries (its rung). Optuna user attrs reuse the keys.
RUNG, RUNGS, FIDELITY = "rung", "rungs", "fidelity"
# What --full-trials counts for a trial, in full-budget trainings: its fidelity (1 without rungs),
# less the rung it resumed from under halving of the promotion type, plus one per further
# --top-seeds seed.
TRAINED = "trained_share"
NO_SKILL = "no_skill"  # a rung report: the metric a model without skill reaches on the rung's rows (tasks.chance_score)
STOPPED_TAG = "autopeft.stopped_at_rung"
REUSE_TAG = "autopeft.reuse_of"  # a trial answered from an earlier trial's result: that trial's number
# Halving of the promotion type, trial config keys (and so trial run params): a trial that resumes
# a stopped run names the run (its first trial's number) and the rung it goes on from.
RESUME_OF, RESUME_RUNG = "resume_of", "resume_rung"
# Trial config key (and so trial run param): the index of the space's warm-start point a trial
# evaluates. Warm starts are the hand-picked baselines a user would otherwise stop at, so the
# report and ``autopeft pareto`` say which trials beat each one.
WARM_START = "warm_start"
# Fields of a trial's report kept as tags ``autopeft.<key>``: where and how it ran, how far it got,
# and the split its metrics are on (EVAL_SPLIT).
EVAL_SPLIT = "eval_split"  # report key: "dev" or "holdout"
# Report key: CPU-seconds the trial's process spent on it (every thread: building, training,
# scoring, measuring), so far at a rung. What --cpu-budget-s counts; the study keeps it per trial.
CPU_SECONDS = "cpu_seconds"
# A failed trial reports nothing, so its process adds this note to the exception it raises (the
# traceback Ray records carries it): the CPU it spent still counts against --cpu-budget-s.
CPU_SECONDS_NOTE = "autopeft cpu_seconds spent before failing:"
RESULT_TAGS = ("node_id", "hostname", "device", "memory_measure", RUNG, FIDELITY, EVAL_SPLIT)


def result_tag(key: str) -> str:
    return f"autopeft.{key}"

# Why a trial failed: the values of FAILURE_TAG (and of the Optuna trial's autopeft_failure).
INTERRUPTED = "interrupted"  # its driver stopped or died first; always asked again
NODE_LOST = "node_lost"  # the Ray node running it died
WORKER_LOST = "worker_lost"  # its worker process died (killed, crashed) while its node lived
LOST_FAILURES = (NODE_LOST, WORKER_LOST)  # say nothing about the configuration: --retry-lost-trials asks it again
FAILURES = ("exception", "diverged", "out_of_memory", INTERRUPTED, *LOST_FAILURES)

# ----------------------------------------------------------------------------- params
OBJECTIVES_PARAM = "objectives"  # parent run: objective keys, comma-separated, in study order
TASK_REF_PARAM = "task_ref"  # parent run: what `autopeft export` writes (shipped name or absolute path)
BUDGET_PREFIX = "budget/"  # parent run: the search's TrainBudget fields
TRAINING_PREFIX = "train/"  # trial run: sampled training settings (learning rate, ...)

# ----------------------------------------------------------------------------- artifacts
PEFT_CONFIG_ARTIFACT = "peft_config.json"  # trial run: the sampled PeftConfig
TRACEBACK_ARTIFACT = "traceback.txt"  # failed trial run
PARETO_CSV = "pareto/pareto_front.csv"  # parent run
PARETO_PNG = "pareto/pareto_front.png"
REPORT_HTML = "pareto/pareto_report.html"

# MLflow run status -> trial status as autopeft reports it.
RUN_STATUS = {"FINISHED": "COMPLETE", "FAILED": "FAILED", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING"}


def parse_param(value: str) -> Any:
    """An MLflow param back to its value (params are stored as text)."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return None if value == "None" else value


def trial_runs_filter(parent_run_id: str) -> str:
    return f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{KIND_TAG}` = '{KIND_TRIAL}'"


@dataclass
class TrialRecord(Mapping):
    """One trial as the tracking store has it.

    Typed fields for what every trial has; ``values`` holds every number it reported (objectives,
    the task's own metric names, timings). Reading ``record[key]`` looks up a field, then
    ``values`` (None when absent), so tables and templates can treat fields and reported numbers
    alike.
    """

    trial: int  # Optuna trial number
    run_id: str
    # COMPLETE | STOPPED (successive halving, below the top rung) | REUSED (a duplicate of an
    # earlier trial, its values copied; fronts hold the original) | FAILED | INTERRUPTED | RUNNING
    status: str
    peft: str = ""  # the configuration, compact
    peft_words: str | None = None  # the configuration in words
    failure: str | None = None  # one of FAILURES
    error: str | None = None
    asked_again: bool = False  # lost, and its configuration asked again (the retry counts instead)
    training: dict[str, Any] = field(default_factory=dict)  # sampled training settings
    values: dict[str, float] = field(default_factory=dict)
    pareto: bool = False  # set by pareto.mark_front over the search's objectives
    # Halving of the promotion type: a trial that resumed a stopped run has the run's first trial
    # (``resume_of``) and the rung it went on from; a STOPPED trial whose run a later trial went on
    # with has that trial (``resumed_by``, set by ``trial_records``): it was paused, not stopped.
    resume_of: int | None = None
    resume_rung: int | None = None
    resumed_by: int | None = None
    # The space's warm-start point this trial evaluates (its index there); a trial resuming a
    # warm start's run carries it too (set by ``trial_records``).
    warm_start: int | None = None

    @property
    def stopped_early(self) -> bool:
        """Stopped below the top rung for good."""
        return self.status == "STOPPED" and self.resumed_by is None

    @property
    def paused(self) -> bool:
        """Stopped below the top rung, and a later trial went on with its run from there."""
        return self.status == "STOPPED" and self.resumed_by is not None

    def _fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.name != "values")

    def __getitem__(self, key: str) -> Any:
        if key in self._fields():
            return getattr(self, key)
        if key in self.values:
            return self.values[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:  # Mapping.get, spelled out for speed
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        yield from self._fields()
        yield from (k for k in self.values if k not in self._fields())

    def __len__(self) -> int:
        return len(list(iter(self)))


def trial_record(run: Any) -> TrialRecord:
    """A trial run (``mlflow.entities.Run``) as a TrialRecord."""
    tags, metrics = run.data.tags, run.data.metrics
    status = RUN_STATUS.get(run.info.status, run.info.status)
    if status == "COMPLETE" and "metric" not in metrics:
        status = "FAILED"  # finished without a report: nothing to put on a front
    if status == "COMPLETE" and STOPPED_TAG in tags:
        status = "STOPPED"  # a low-fidelity result: the sampler learnt from it, fronts leave it out
    if status in ("COMPLETE", "STOPPED") and REUSE_TAG in tags:
        status = "REUSED"
    values = dict(metrics)
    if "trainable_params" in values:
        values["trainable_params"] = int(values["trainable_params"])
    params = run.data.params
    links = {k: int(params[k]) for k in (RESUME_OF, RESUME_RUNG, WARM_START) if params.get(k) not in (None, "None")}
    return TrialRecord(
        trial=int(tags.get(TRIAL_NUMBER_TAG, -1)), run_id=run.info.run_id, status=status,
        peft=tags.get(PEFT_TAG, ""), peft_words=tags.get(PEFT_WORDS_TAG), failure=tags.get(FAILURE_TAG),
        error=tags.get(ERROR_TAG), asked_again=tags.get(ASKED_AGAIN_TAG) == "true",
        training={k[len(TRAINING_PREFIX):]: parse_param(v) for k, v in run.data.params.items()
                  if k.startswith(TRAINING_PREFIX)},
        values=values, **links)


def trial_records(runs: Iterable[Any]) -> list[TrialRecord]:
    """Trial runs as TrialRecords in trial order, each STOPPED trial that a later trial resumed
    linked to it (``resumed_by``). A run is named by its first trial; the trial resuming it from
    rung k continues the one that stopped at rung k (a resume that was interrupted and asked again
    is superseded by the later ask). A trial that goes on with a warm start's run is marked as that
    warm start."""
    records = sorted((trial_record(r) for r in runs), key=lambda r: r.trial)
    first = {r.trial: r for r in records}
    for r in records:
        if r.resume_of is not None and r.warm_start is None and r.resume_of in first:
            r.warm_start = first[r.resume_of].warm_start
    paused = {((r.resume_of if r.resume_of is not None else r.trial), int(r.values[RUNG])): r
              for r in records if r.status == "STOPPED" and r.values.get(RUNG) is not None}
    for r in records:
        if r.resume_of is not None and r.status not in ("FAILED", "INTERRUPTED"):
            stopped = paused.get((r.resume_of, r.resume_rung))
            if stopped is not None:
                stopped.resumed_by = r.trial
    return records


def failed_cpu_seconds(traceback_text: str) -> float | None:
    """The CPU-seconds a failed trial's process noted in its traceback (``CPU_SECONDS_NOTE``)."""
    noted = [ln.strip()[len(CPU_SECONDS_NOTE):] for ln in traceback_text.splitlines()
             if ln.strip().startswith(CPU_SECONDS_NOTE)]
    try:
        return float(noted[-1]) if noted else None
    except ValueError:
        return None


def cpu_seconds_spent(records: Iterable[Mapping]) -> float:
    """What a search's trials cost, as ``--cpu-budget-s`` counts it: a failed trial counts what
    its traceback says it spent (nothing when its process died), and a reused one carries its
    source's values but trained nothing."""
    return sum(r.get(CPU_SECONDS) or 0.0 for r in records if r.get("status") != "REUSED")
