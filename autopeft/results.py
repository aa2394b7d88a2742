"""Reading a finished (or running) search back from the MLflow tracking store, and picking from it.

Everything here reads only the tracking store, so it works after the search process has exited
and from any machine pointed at the same tracking URI.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from autopeft import schema
from autopeft.errors import AutopeftError, ConfigError
from autopeft.objectives import METRIC, TRAINABLE_PARAMS, Objective, available_objectives, directions, get_objective
from autopeft.pareto import mark_front
from autopeft.schema import TrialRecord


class SearchNotFound(AutopeftError):
    """No search with that name or run id is in the tracking store."""


class NothingToPick(AutopeftError):
    """The front is empty, or no trial meets the constraints."""


@dataclass
class SearchRecord:
    """A search as its tracking store holds it: what ``run_search`` returns and ``load_search`` reads."""

    name: str
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    model: str
    task: str
    metric_name: str
    objectives: dict[str, Objective]  # as the search optimised them, in study order
    budget: dict[str, Any]
    trials: list[TrialRecord]  # every trial run, by trial number, ``pareto`` set over completed trials

    def __post_init__(self) -> None:
        self.trials = mark_front(sorted(self.trials, key=lambda t: t.trial), self.directions)

    @property
    def front(self) -> list[TrialRecord]:
        return sorted((t for t in self.trials if t.pareto), key=lambda t: (-t[METRIC], t[TRAINABLE_PARAMS]))

    @property
    def directions(self) -> dict[str, str]:
        return directions(self.objectives)


def search_objectives(keys: str) -> dict[str, Objective]:
    """The objectives a parent run's ``objectives`` param names; a plugin's must be loaded to read them."""
    out = {}
    for key in filter(None, keys.split(",")):
        try:
            out[key] = get_objective(key)
        except ConfigError:
            raise ConfigError(f"the search optimised objective {key!r}, which is not registered here; set "
                              f"AUTOPEFT_PLUGINS to the module that registers it") from None
    return out


def load_search(search: str | None = None, tracking_uri: str | None = None,
                experiment: str = "autopeft") -> SearchRecord:
    """The search named ``search`` (or with that parent run id); the latest one when None."""
    from mlflow.tracking import MlflowClient

    from autopeft.stores import sqlite_path
    from autopeft.tracking import resolve_tracking_uri, trial_runs

    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        # MLflow would silently create an empty store there
        raise SearchNotFound(f"no tracking store at {uri}: point --tracking-uri (or MLFLOW_TRACKING_URI) at the "
                             f"store the search used")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SearchNotFound(f"no MLflow experiment {experiment!r} in {uri}: run `autopeft search` first, "
                             f"or point --tracking-uri at the store the search used")
    where = f"tags.`{schema.KIND_TAG}` = '{schema.KIND_SEARCH}'"
    if search:
        runs = client.search_runs([exp.experiment_id], f"{where} and tags.`{schema.SEARCH_TAG}` = '{_quote(search)}'")
        if not runs:
            runs = [r for r in [_get_run(client, search)]
                    if r and r.data.tags.get(schema.KIND_TAG) == schema.KIND_SEARCH]
    else:
        runs = client.search_runs([exp.experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        what = f"search {search!r}" if search else "any search"
        raise SearchNotFound(f"no {what} in experiment {experiment!r} of {uri} (a search name or its MLflow "
                             f"parent run id); list them in `autopeft dashboard`")
    parent = runs[0]
    params, tags = parent.data.params, parent.data.tags
    objectives = search_objectives(params.get(schema.OBJECTIVES_PARAM, f"{METRIC},{TRAINABLE_PARAMS}"))
    budget = {k[len(schema.BUDGET_PREFIX):]: schema.parse_param(v) for k, v in params.items()
              if k.startswith(schema.BUDGET_PREFIX)}
    trials = schema.trial_records(trial_runs(client, exp.experiment_id, parent.info.run_id))
    return SearchRecord(tags.get(schema.SEARCH_TAG, parent.info.run_name), parent.info.run_id, uri,
                        exp.experiment_id, params.get("model", tags.get(schema.MODEL_TAG, "")),
                        tags.get(schema.TASK_TAG, params.get("task", "")),
                        tags.get(schema.METRIC_NAME_TAG, METRIC), objectives, budget, trials)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _get_run(client: Any, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except Exception:  # not a run id of this store
        return None


def limit_names() -> dict[str, Objective]:
    """Constraint name (``max_params``, ``max_latency``, ...) -> its objective."""
    return {o.limit: o for o in available_objectives().values() if o.limit}


def pick(front: Sequence[TrialRecord], trial: int | None = None, **limits: float | None) -> list[TrialRecord]:
    """The front trials meeting the constraints, best metric first; one trial when ``trial`` is given.

    ``limits`` are objectives' constraint names (``max_params=50_000``, ``max_latency=2.0``,
    ``min_metric=0.8``); None means unconstrained.
    """
    known = limit_names()
    unknown = sorted(set(limits) - set(known))
    if unknown:
        raise ConfigError(f"unknown constraint(s) {unknown}; known: {', '.join(sorted(known))}")
    limits = {k: v for k, v in limits.items() if v is not None}
    if not front:
        raise NothingToPick("the search has no completed trial, so its Pareto front is empty")
    ok = [t for t in front if all(known[k].allows(t.get(known[k].key), v) for k, v in limits.items())]
    if not ok:
        spans = ", ".join(f"{o.key} {o.format(min(vals))}..{o.format(max(vals))}"
                          for o in {known[k].key: known[k] for k in limits or ("min_metric", "max_params")}.values()
                          if (vals := [t[o.key] for t in front if t.get(o.key) is not None]))
        wanted = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in limits.items())
        raise NothingToPick(f"no Pareto-optimal trial meets the constraints ({wanted}); the front spans {spans}")
    ok = sorted(ok, key=lambda t: (-t[METRIC], t[TRAINABLE_PARAMS]))
    if trial is not None:
        chosen = [t for t in ok if t.trial == trial]
        if not chosen:
            raise NothingToPick(f"trial {trial} is not on the Pareto front within the constraints; "
                                f"candidates: {[t.trial for t in ok]}")
        return chosen
    return ok


@dataclass
class HandPick:
    """One of the space's warm starts (the hand-picked baselines a search begins with) and the
    completed trials that dominate it over the search's objectives, best metric first. Both were
    measured by the same search at the same budget, so this is the search's own answer to "did it
    beat the hand-pick?"; each is one training run (``--top-seeds`` scores the top over more), on
    the split the search selects on, where the best of many trials is flattered against the one
    warm start: ``autopeft hand-picks`` (``retrain``) retrains both over new seeds, on dev."""

    trial: TrialRecord  # the warm start's trial: the one that reached the full budget, if any did
    beaten_by: list[TrialRecord]  # trials the search found; never another warm start
    # Other warm starts that dominate it: one hand-pick beating another is no answer to "did the
    # search beat the hand-pick?", so they are named apart and nothing is retrained for them.
    by_hand_picks: list[TrialRecord] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        """Whether it has a full-budget result to compare with (not stopped early, not failed)."""
        return self.trial.status == "COMPLETE"


def hand_picks(trials: Sequence[TrialRecord], directions: dict[str, str]) -> list[HandPick]:
    """The search's warm starts in the space's order, each with the completed trials that dominate it."""
    from autopeft.pareto import dominates

    latest: dict[int, TrialRecord] = {}
    for t in sorted(trials, key=lambda t: t.trial):
        # A paused trial's run went on in a later one; a lost trial was asked again: the later counts.
        if t.warm_start is None or t.paused:
            continue
        kept = latest.get(t.warm_start)
        if kept is None or kept.status != "COMPLETE":
            latest[t.warm_start] = t
    done = [t for t in trials if t.status == "COMPLETE"]

    def point(t: TrialRecord) -> list[float]:
        return [float(t[k]) if t.get(k) is not None else math.nan for k in directions]

    def best_first(ts: list[TrialRecord]) -> list[TrialRecord]:
        return sorted(ts, key=lambda t: (-t[METRIC], t[TRAINABLE_PARAMS]))

    out = []
    for _, pick_ in sorted(latest.items()):
        beaten = [] if pick_.status != "COMPLETE" else [
            t for t in done if t.trial != pick_.trial and dominates(point(t), point(pick_), list(directions.values()))]
        out.append(HandPick(pick_, best_first([t for t in beaten if t.warm_start is None]),
                            best_first([t for t in beaten if t.warm_start is not None])))
    return out


def hand_pick_line(hp: HandPick, metric_name: str, words: bool = False) -> str:
    """One line on a warm start: what it scored and which trials beat it (the CLI, compact, and the
    report, with the configuration in words)."""
    t = hp.trial
    head = f"hand-pick (warm start {t.warm_start}) trial {t.trial}, {(t.peft_words if words else None) or t.peft}"
    if not hp.measured:
        why = t.status.lower()
        if t.status == "STOPPED":
            why = "stopped early by successive halving" + (
                f" at rung {int(t['rung'])} ({t['fidelity']:.3g} of the budget), {metric_name} {t[METRIC]:.4f} there"
                if t.get("rung") is not None and t.get("fidelity") is not None and t.get(METRIC) is not None else "")
        return f"{head}: no full-budget result ({why})"
    head += f": {metric_name} {t[METRIC]:.4f}, {int(t[TRAINABLE_PARAMS]):,} params"
    if not hp.beaten_by and hp.by_hand_picks:
        other = hp.by_hand_picks[0]
        return (head + f"; no trial the search found beats it on every objective, but hand-pick trial {other.trial} "
                f"(warm start {other.warm_start}) does: {_against(other, t)}")
    if not hp.beaten_by:
        return head + "; no trial beats it on every objective" + (" (it is on the front)" if t.pareto else "")
    best = hp.beaten_by[0]
    return (head + f"; beaten on every objective by {len(hp.beaten_by)} trial{'s' * (len(hp.beaten_by) > 1)} "
            f"({', '.join(str(b.trial) for b in hp.beaten_by)}), best trial {best.trial}: "
            f"{_against(best, t)}, {_lead_note(best, t)}")


def _against(better: TrialRecord, pick_: TrialRecord) -> str:
    """``M' (+D) at P' params (Rx)``: a dominating trial against the warm start it beats."""
    return (f"{better[METRIC]:.4f} ({better[METRIC] - pick_[METRIC]:+.4f}) at {int(better[TRAINABLE_PARAMS]):,} params "
            f"({better[TRAINABLE_PARAMS] / pick_[TRAINABLE_PARAMS]:.2f}x)")


def _lead_note(better: TrialRecord, pick_: TrialRecord) -> str:
    """Whether a metric lead is more than seed noise can tell: one run each says nothing of that;
    over seeds (``--top-seeds``) the lead is read against the larger std, as the suite reads its
    baselines (benchmarks/README.md)."""
    stds = [r.get(f"{METRIC}_std") for r in (better, pick_)]
    if any(sd is None for sd in stds):
        return "one training run each"
    lead, noise = better[METRIC] - pick_[METRIC], max(stds)
    return (f"metric lead {'beyond' if lead > noise else 'within'} the larger std over seeds ({noise:.4f}; "
            f"{int(better.get('seeds') or 0)} and {int(pick_.get('seeds') or 0)} seeds)")


def trial_peft_config(record: SearchRecord, trial: dict[str, Any]) -> dict[str, Any]:
    """The ``peft_config.json`` artifact of a trial run."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar
    client = MlflowClient(record.tracking_uri)
    try:
        with open(client.download_artifacts(trial["run_id"], schema.PEFT_CONFIG_ARTIFACT)) as f:
            return json.load(f)
    except Exception as exc:
        raise AutopeftError(f"cannot read the configuration of trial {trial['trial']} (run {trial['run_id']}): {exc}") from None


def to_export(record: SearchRecord, trial: dict[str, Any]):
    """The ExportedConfig of one trial: its PEFT config, training settings and objective values."""
    from autopeft.config import PeftConfig, TrainBudget
    from autopeft.export import ExportedConfig

    peft = PeftConfig.from_dict(trial_peft_config(record, trial))
    known = set(TrainBudget.__dataclass_fields__)
    budget = TrainBudget.from_dict({k: v for k, v in {**record.budget, **trial["training"]}.items() if k in known})
    objectives = {k: trial[k] for k in (*available_objectives(), "trainable_percent") if trial.get(k) is not None}
    source = {"search": record.name, "parent_run_id": record.parent_run_id, "run_id": trial["run_id"],
              "trial": trial["trial"], "tracking_uri": record.tracking_uri}
    return ExportedConfig(record.model, _task_ref(record), peft, budget, objectives, record.metric_name, source)


def _task_ref(record: SearchRecord) -> str:
    # The parent run tags the task by name; a user task's YAML path is in the trial context only,
    # which the search logs as the ``task`` param when it is a path.
    from mlflow.tracking import MlflowClient

    params = MlflowClient(record.tracking_uri).get_run(record.parent_run_id).data.params
    return params.get(schema.TASK_REF_PARAM, record.task)
