"""MLflow tracking: one parent run per search, one nested run per trial, the Pareto front.

Only the driver writes (through ``MlflowClient`` with an explicit URI), so trials running in other
directories or on other nodes never need the store, and SQLite sees a single writer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from autopeft.errors import ConfigError

SEARCH_TAG = "autopeft.search"  # parent run: the search name
TRIAL_TAG = "autopeft.trial"  # trial run: Ray's trial id
KIND_TAG = "autopeft.kind"  # "search" | "trial"
# Text fields of a trial's result kept as tags ``autopeft.<key>``: where and how it ran.
RESULT_TAGS = ("node_id", "hostname", "device", "memory_measure")
PARETO_CSV = "pareto/pareto_front.csv"
PARETO_PNG = "pareto/pareto_front.png"
FRONT_COLUMNS = ("trial", "pareto", "metric", "trainable_params", "trainable_percent", "peak_memory_mb",
                 "train_seconds", "eval_seconds", "status", "peft", "run_id")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else MLflow's default; local SQLite paths made absolute."""
    import mlflow

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        uri = Path(uri).resolve().as_uri()
    return uri


def _local_artifact_root(uri: str) -> str | None:
    # A local store would put artifacts in ./mlruns of whatever directory created the experiment;
    # pin them beside the database. Servers (http) manage their own artifact root.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    if uri.startswith("file:"):
        return None
    return None


class SearchTracker:
    """The MLflow side of one search."""

    def __init__(self, tracking_uri: str | None, experiment: str, search_name: str,
                 params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial tables" is noise
        self.uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:
            raise ConfigError(f"cannot reach the MLflow tracking store {self.uri!r}: {exc}") from None
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=_local_artifact_root(self.uri))
        self.search_name = search_name
        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = '{search_name}' and tags.`{KIND_TAG}` = 'search'")
        if existing:  # the same search again (resume): keep recording under its run
            self.parent_id = existing[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=search_name, tags={
                SEARCH_TAG: search_name, KIND_TAG: "search", **(tags or {})})
            self.parent_id = run.info.run_id
            self._log_params(self.parent_id, params)
        self._trial_runs: dict[str, str] = {}

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[i:i + 100])

    # ------------------------------------------------------------------ trials
    def trial_started(self, trial_id: str, name: str, params: dict[str, Any], peft_json: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": self.parent_id, SEARCH_TAG: self.search_name, KIND_TAG: "trial",
            TRIAL_TAG: trial_id, "autopeft.peft": _describe(peft_json)})
        self._trial_runs[trial_id] = run.info.run_id
        self._log_params(run.info.run_id, params)
        self.client.log_dict(run.info.run_id, peft_json, "peft_config.json")
        return run.info.run_id

    def trial_result(self, trial_id: str, result: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric, RunTag
        import time

        run_id = self._trial_runs[trial_id]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tags = [RunTag(f"autopeft.{k}", str(v)) for k, v in result.items() if k in RESULT_TAGS]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def trial_finished(self, trial_id: str, failed: bool = False, error: str | None = None) -> None:
        run_id = self._trial_runs.get(trial_id)
        if run_id is None:
            return
        if error:
            self.client.set_tag(run_id, "autopeft.error", error.strip().splitlines()[-1][:500] if error.strip() else "")
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def run_id_of(self, trial_id: str) -> str | None:
        return self._trial_runs.get(trial_id)

    # ------------------------------------------------------------------ search
    def log_front(self, records: Sequence[dict[str, Any]], metric_name: str) -> None:
        from autopeft.plots import plot_pareto

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(FRONT_COLUMNS) + [metric_name] * (metric_name not in FRONT_COLUMNS),
                                extrasaction="ignore")
        writer.writeheader()
        for r in sorted(records, key=lambda r: (not r["pareto"], -(r.get("metric") or float("-inf")))):
            writer.writerow({**r, metric_name: r.get("metric")})
        self.client.log_text(self.parent_id, buf.getvalue(), PARETO_CSV)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_pareto(records, metric_name, Path(tmp) / Path(PARETO_PNG).name, title=self.search_name)
            self.client.log_artifact(self.parent_id, str(png), str(Path(PARETO_PNG).parent))
        done = [r for r in records if r["status"] == "COMPLETE"]
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        summary = {"trials_completed": len(done), "trials_failed": sum(r["status"] == "FAILED" for r in records),
                   "pareto_size": sum(bool(r["pareto"]) for r in records)}
        if done:
            summary[f"best_{metric_name}"] = max(r["metric"] for r in done)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])

    def finish(self, failed: bool = False) -> None:
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")


def _describe(peft_json: dict) -> str:
    from autopeft.config import PeftConfig

    return PeftConfig.from_dict(peft_json).describe()[:5000]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out
