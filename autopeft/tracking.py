"""MLflow tracking: one parent run per search, one nested run per trial, the Pareto front.

Only the driver writes (through ``MlflowClient`` with an explicit URI), so trials running in other
directories or on other nodes never need the store, and SQLite sees a single writer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from autopeft._locks import sqlite_init_lock
from autopeft.errors import ConfigError

SEARCH_TAG = "autopeft.search"  # parent run: the search name
TRIAL_TAG = "autopeft.trial"  # trial run: Ray's trial id
TRIAL_NUMBER_TAG = "autopeft.trial_number"  # trial run: the Optuna trial number (unique per search)
FAILURE_TAG = "autopeft.failure"  # failed trial run: one of FAILURES
ERROR_TAG = "autopeft.error"  # failed trial run: the reason, one line
ASKED_AGAIN_TAG = "autopeft.asked_again"  # lost trial run: "true" when its configuration was asked again
# Why a trial failed: the values of FAILURE_TAG (and of the Optuna trial's autopeft_failure).
INTERRUPTED = "interrupted"  # its driver stopped or died first; always asked again
NODE_LOST = "node_lost"  # the Ray node running it died
WORKER_LOST = "worker_lost"  # its worker process died (killed, crashed) while its node lived
LOST_FAILURES = (NODE_LOST, WORKER_LOST)  # say nothing about the configuration: --retry-lost-trials asks it again
# Not stored: Ray lost touch with the trial's process before it knew why; the driver then asks the
# cluster whether the trial's node died (autopeft.cluster.lost_with_node) and records one of LOST_FAILURES.
UNREACHABLE = "unreachable"
FAILURES = ("exception", "diverged", "out_of_memory", INTERRUPTED, *LOST_FAILURES)
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
    return None


class SearchTracker:
    """The MLflow side of one search."""

    def __init__(self, tracking_uri: str | None, experiment: str, search_name: str,
                 params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial tables" is noise
        self.uri = resolve_tracking_uri(tracking_uri)
        exp = self._connect(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=_local_artifact_root(self.uri))
        self.search_name = search_name
        parents = self._parents()
        if not parents:
            run = self.client.create_run(self.experiment_id, run_name=search_name, tags={
                SEARCH_TAG: search_name, KIND_TAG: "search", **(tags or {})})
            self._log_params(run.info.run_id, params)
            # Two drivers starting one search at once may both create a parent: the earliest wins
            # and the other deletes its own, so every trial nests under one run.
            parents = self._parents()
            if parents[0].info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        self.parent_id = parents[0].info.run_id  # a resumed or shared search reuses its run
        self.client.update_run(self.parent_id, status="RUNNING")
        self._trial_runs: dict[str, str] = {}

    def _connect(self, experiment: str, attempts: int = 5):
        from mlflow.tracking import MlflowClient

        # Two drivers creating one new SQLite store race on its schema migration (the client
        # migrates on creation); the loser succeeds once the winner has finished, so retry
        # before calling the store unusable.
        for attempt in range(attempts):
            try:
                with sqlite_init_lock(self.uri):
                    self.client = MlflowClient(self.uri)
                    return self.client.get_experiment_by_name(experiment)
            except Exception as exc:
                if attempt == attempts - 1:
                    raise ConfigError(f"cannot use the MLflow tracking store {self.uri!r}: {exc}") from None
                time.sleep(1.0 * (attempt + 1))

    def _parents(self) -> list:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{SEARCH_TAG}` = '{self.search_name}' and tags.`{KIND_TAG}` = 'search'",
            order_by=["attributes.start_time ASC"])
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[i:i + 100])

    # ------------------------------------------------------------------ trials
    def trial_started(self, trial_id: str, number: int, params: dict[str, Any], peft_json: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{self.search_name}-t{number:03d}", tags={
            "mlflow.parentRunId": self.parent_id, SEARCH_TAG: self.search_name, KIND_TAG: "trial",
            TRIAL_TAG: trial_id, TRIAL_NUMBER_TAG: str(number), "autopeft.peft": _describe(peft_json)})
        self._trial_runs[trial_id] = run.info.run_id
        self._log_params(run.info.run_id, params)
        self.client.log_dict(run.info.run_id, peft_json, "peft_config.json")
        return run.info.run_id

    def trial_result(self, trial_id: str, result: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._trial_runs[trial_id]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tags = [RunTag(f"autopeft.{k}", str(v)) for k, v in result.items() if k in RESULT_TAGS]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def has_run(self, trial_id: str) -> bool:
        return trial_id in self._trial_runs

    def trial_finished(self, trial_id: str, error: str | None = None, failure: tuple[str, str] | None = None,
                       asked_again: bool = False) -> None:
        """End a trial's run: FINISHED, or FAILED with its reason tagged and traceback attached.

        ``failure`` (category, reason) when the caller knows better than the traceback says.
        """
        run_id = self._trial_runs.get(trial_id)
        if run_id is None:
            return
        if error is not None:
            category, reason = failure or classify_failure(error)
            self.client.set_tag(run_id, FAILURE_TAG, category)
            self.client.set_tag(run_id, ERROR_TAG, reason[:5000])
            if asked_again:
                self.client.set_tag(run_id, ASKED_AGAIN_TAG, "true")
            self.client.log_text(run_id, error, "traceback.txt")
        self.client.set_terminated(run_id, "FAILED" if error is not None else "FINISHED")

    def mark_interrupted(self, numbers: Sequence[int]) -> None:
        """Trials whose driver died or was stopped: KILLED, and said so.

        A trial stopped before its run was created (asked, not yet started) gets one here, so that
        every trial of the study has exactly one run.
        """
        wanted = {str(n) for n in numbers}
        if not wanted:
            return
        runs = {r.data.tags.get(TRIAL_NUMBER_TAG): r for r in self.trial_runs()
                if r.data.tags.get(TRIAL_NUMBER_TAG) in wanted}
        for number in sorted(wanted, key=int):
            run = runs.get(number)
            if run is not None and run.info.status != "RUNNING":
                continue
            run_id = run.info.run_id if run is not None else self.client.create_run(
                self.experiment_id, run_name=f"{self.search_name}-t{int(number):03d}", tags={
                    "mlflow.parentRunId": self.parent_id, SEARCH_TAG: self.search_name, KIND_TAG: "trial",
                    TRIAL_NUMBER_TAG: number}).info.run_id
            self.client.set_tag(run_id, FAILURE_TAG, INTERRUPTED)
            self.client.set_tag(run_id, ERROR_TAG, "the search stopped before this trial finished; "
                                "it is asked again when the search resumes")
            self.client.set_terminated(run_id, "KILLED")

    def trial_runs(self) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
            max_results=50000)

    def trial_records(self) -> list[dict[str, Any]]:
        """Every trial of this search as the tracking store has it, whichever process ran it."""
        return sorted((trial_record(r) for r in self.trial_runs()), key=lambda r: r["trial"])

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

        now = int(time.time() * 1000)
        summary = {"trials_completed": len(done), "trials_failed": sum(r["status"] == "FAILED" for r in records),
                   "trials_interrupted": sum(r["status"] == "INTERRUPTED" for r in records),
                   "trials_lost": sum(r["failure"] in LOST_FAILURES for r in records),
                   "pareto_size": sum(bool(r["pareto"]) for r in records)}
        if done:
            summary[f"best_{metric_name}"] = max(r["metric"] for r in done)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


_STATUS = {"FINISHED": "COMPLETE", "FAILED": "FAILED", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING"}


def trial_record(run: Any) -> dict[str, Any]:
    """One trial run as a plain record: its metrics, status, configuration summary and failure."""
    tags, metrics = run.data.tags, run.data.metrics
    status = _STATUS.get(run.info.status, run.info.status)
    if status == "COMPLETE" and "metric" not in metrics:
        status = "FAILED"  # finished without a report: nothing to put on a front
    record = {**metrics, "trial": int(tags.get(TRIAL_NUMBER_TAG, -1)), "run_id": run.info.run_id, "status": status,
              "peft": tags.get("autopeft.peft", ""), "failure": tags.get(FAILURE_TAG), "error": tags.get(ERROR_TAG),
              "asked_again": tags.get(ASKED_AGAIN_TAG) == "true",
              "training": {k.split("/", 1)[1]: _parse_param(v) for k, v in run.data.params.items()
                           if k.startswith("train/")}}
    if "trainable_params" in record:
        record["trainable_params"] = int(record["trainable_params"])
    return record


def _parse_param(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return None if value == "None" else value


_FAILURES = {"TrainingDiverged": "diverged", "TrialOutOfMemory": "out_of_memory",
             "OutOfMemoryError": "out_of_memory", "MemoryError": "out_of_memory"}


# Ray's words (GCS death causes, Ray 2.x) for a trial actor that died with its node or alone.
_NODE_DIED = "because its node has died"
_WORKER_DIED = ("because its worker process has died", "WorkerCrashedError")
# Ray's error file may hold the message without the exception's name.
_UNREACHABLE = ("ActorUnavailableError", "The actor is temporarily unavailable")


def classify_failure(traceback_text: str) -> tuple[str, str]:
    """(category, one-line reason) from a trial's traceback as Ray recorded it."""
    lines = [ln.strip() for ln in traceback_text.strip().splitlines() if ln.strip()]
    # A lost trial's traceback is Ray's, not the trial's: its last line is the death cause.
    if any(_NODE_DIED in ln for ln in lines):
        cause = next(ln for ln in lines if _NODE_DIED in ln)
        return NODE_LOST, f"the Ray node running this trial died ({cause})"
    if any(w in ln for ln in lines for w in _WORKER_DIED) and "OutOfMemoryError" not in traceback_text:
        cause = next(ln for ln in lines if any(w in ln for w in _WORKER_DIED))
        return WORKER_LOST, f"the trial's worker process died ({cause[:300]})"
    if any(w in ln for ln in lines for w in _UNREACHABLE):
        return UNREACHABLE, next(ln for ln in lines if any(w in ln for w in _UNREACHABLE))[:300]
    # The innermost "module.ExceptionName: message" line names what really went wrong.
    raised = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Diverged|OutOfMemory|Interrupt)\b.*:", ln)]
    reason = raised[-1] if raised else (lines[-1] if lines else "unknown error")
    name = reason.split(":", 1)[0].rsplit(".", 1)[-1]
    for key, category in _FAILURES.items():
        if key in name or key in reason:
            return category, reason
    return "exception", reason


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).read()
    except Exception as exc:
        raise ConfigError(
            f"the MLflow tracking server {uri} does not answer ({exc}); start it (mlflow server ...) "
            f"or give another --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


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
