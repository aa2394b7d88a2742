"""Reading a finished (or running) search back from the MLflow tracking store, and picking from it.

Everything here reads only the tracking store, so it works after the search process has exited
and from any machine pointed at the same tracking URI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autopeft.errors import AutopeftError
from autopeft.pareto import mark_front
from autopeft.trial import METRIC, OBJECTIVES, PEAK_MEMORY_MB, TRAINABLE_PARAMS


class SearchNotFound(AutopeftError):
    """No search with that name or run id is in the tracking store."""


class NothingToPick(AutopeftError):
    """The front is empty, or no trial meets the constraints."""




@dataclass
class SearchRecord:
    name: str
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    model: str
    task: str
    metric_name: str
    objectives: dict[str, str]  # objective key -> "max" | "min", as the search optimised them
    budget: dict[str, Any]
    trials: list[dict[str, Any]]  # one dict per trial run, with "pareto" set over completed trials

    @property
    def front(self) -> list[dict[str, Any]]:
        return sorted((t for t in self.trials if t["pareto"]), key=lambda t: (-t[METRIC], t[TRAINABLE_PARAMS]))


def load_search(search: str | None = None, tracking_uri: str | None = None,
                experiment: str = "autopeft") -> SearchRecord:
    """The search named ``search`` (or with that parent run id); the latest one when None."""
    from mlflow.tracking import MlflowClient

    from autopeft.tracking import KIND_TAG, SEARCH_TAG, _parse_param, resolve_tracking_uri, trial_record

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        # MLflow would silently create an empty store there
        raise SearchNotFound(f"no tracking store at {uri}: point --tracking-uri (or MLFLOW_TRACKING_URI) at the "
                             f"store the search used")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SearchNotFound(f"no MLflow experiment {experiment!r} in {uri}: run `autopeft search` first, "
                             f"or point --tracking-uri at the store the search used")
    where = f"tags.`{KIND_TAG}` = 'search'"
    if search:
        runs = client.search_runs([exp.experiment_id], f"{where} and tags.`{SEARCH_TAG}` = '{_quote(search)}'")
        if not runs:
            runs = [r for r in [_get_run(client, search)] if r and r.data.tags.get(KIND_TAG) == "search"]
    else:
        runs = client.search_runs([exp.experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        what = f"search {search!r}" if search else "any search"
        raise SearchNotFound(f"no {what} in experiment {experiment!r} of {uri} (a search name or its MLflow "
                             f"parent run id); list them in `autopeft dashboard`")
    parent = runs[0]
    params = parent.data.params
    keys = params.get("objectives", f"{METRIC},{TRAINABLE_PARAMS}").split(",")
    objectives = {k: OBJECTIVES[k] for k in keys if k in OBJECTIVES}
    budget = {k.split("/", 1)[1]: _parse_param(v) for k, v in params.items() if k.startswith("budget/")}
    trial_runs = client.search_runs([exp.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{KIND_TAG}` = 'trial'",
                                    order_by=["attributes.start_time ASC"], max_results=10000)
    trials = mark_front([trial_record(r) for r in trial_runs], objectives)
    return SearchRecord(parent.data.tags.get(SEARCH_TAG, parent.info.run_name), parent.info.run_id, uri,
                        exp.experiment_id, params.get("model", parent.data.tags.get("autopeft.model", "")),
                        parent.data.tags.get("autopeft.task", params.get("task", "")),
                        parent.data.tags.get("autopeft.metric_name", METRIC), objectives, budget, trials)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _get_run(client: Any, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except Exception:  # not a run id of this store
        return None


def pick(front: Sequence[dict[str, Any]], max_params: int | None = None, max_memory: float | None = None,
         min_metric: float | None = None, trial: int | None = None) -> list[dict[str, Any]]:
    """The front trials meeting the constraints, best metric first; one trial when ``trial`` is given."""
    if not front:
        raise NothingToPick("the search has no completed trial, so its Pareto front is empty")
    ok = [t for t in front
          if (max_params is None or t[TRAINABLE_PARAMS] <= max_params)
          and (max_memory is None or (t[PEAK_MEMORY_MB] or 0.0) <= max_memory)
          and (min_metric is None or t[METRIC] >= min_metric)]
    if not ok:
        limits = ", ".join(f"{k} {v}" for k, v in (("max params", max_params), ("max memory MB", max_memory),
                                                   ("min metric", min_metric)) if v is not None)
        raise NothingToPick(f"no Pareto-optimal trial meets the constraints ({limits}); the front spans "
                            f"metric {min(t[METRIC] for t in front):.4f}..{max(t[METRIC] for t in front):.4f}, "
                            f"{min(t[TRAINABLE_PARAMS] for t in front):,}..{max(t[TRAINABLE_PARAMS] for t in front):,} params")
    ok = sorted(ok, key=lambda t: (-t[METRIC], t[TRAINABLE_PARAMS]))
    if trial is not None:
        chosen = [t for t in ok if t["trial"] == trial]
        if not chosen:
            raise NothingToPick(f"trial {trial} is not on the Pareto front within the constraints; "
                                f"candidates: {[t['trial'] for t in ok]}")
        return chosen
    return ok


def trial_peft_config(record: SearchRecord, trial: dict[str, Any]) -> dict[str, Any]:
    """The ``peft_config.json`` artifact of a trial run."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar
    client = MlflowClient(record.tracking_uri)
    try:
        with open(client.download_artifacts(trial["run_id"], "peft_config.json")) as f:
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
    objectives = {k: trial[k] for k in (METRIC, TRAINABLE_PARAMS, "trainable_percent", PEAK_MEMORY_MB)
                  if trial.get(k) is not None}
    source = {"search": record.name, "parent_run_id": record.parent_run_id, "run_id": trial["run_id"],
              "trial": trial["trial"], "tracking_uri": record.tracking_uri}
    return ExportedConfig(record.model, _task_ref(record), peft, budget, objectives, record.metric_name, source)


def _task_ref(record: SearchRecord) -> str:
    # The parent run tags the task by name; a user task's YAML path is in the trial context only,
    # which the search logs as the ``task`` param when it is a path.
    from mlflow.tracking import MlflowClient

    params = MlflowClient(record.tracking_uri).get_run(record.parent_run_id).data.params
    return params.get("task_ref", record.task)
