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
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from autopeft import schema
from autopeft.errors import ConfigError
from autopeft.schema import (ASKED_AGAIN_TAG, ERROR_TAG, FAILURE_TAG, INTERRUPTED, KIND_SEARCH, KIND_TAG, KIND_TRIAL,
                             LOST_FAILURES, NODE_LOST, PARENT_TAG, PEFT_TAG, RESULT_TAGS, SEARCH_TAG, TRIAL_NUMBER_TAG,
                             TRIAL_TAG, WORKER_LOST, TrialRecord)
from autopeft.stores import absolute, open_with_retry, sqlite_path

if TYPE_CHECKING:
    from autopeft.study import TrialEnd

# Front CSV columns before and after the objectives (which come from the search's objective keys).
_FRONT_LEAD = ("trial", "pareto")
_FRONT_TAIL = ("trainable_percent", "train_seconds", "eval_seconds", "status", "fidelity", "peft", "run_id")
# Not stored: Ray lost touch with the trial's process before it knew why; the driver then asks the
# cluster whether the trial's node died (autopeft.cluster.lost_with_node) and records one of LOST_FAILURES.
UNREACHABLE = "unreachable"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else MLflow's default; local SQLite paths made absolute."""
    import mlflow

    uri = absolute(uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri())
    if "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        uri = Path(uri).resolve().as_uri()
    return uri


def local_artifact_root(uri: str) -> str | None:
    # A local store would put artifacts in ./mlruns of whatever directory created the experiment;
    # pin them beside the database. Servers (http) manage their own artifact root.
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


def trial_runs(client: Any, experiment_id: str, parent_run_id: str) -> list:
    """Every trial run of one search, oldest first: the one query writer and readers share."""
    runs = client.search_runs([experiment_id], filter_string=schema.trial_runs_filter(parent_run_id),
                              order_by=["attributes.start_time ASC"], max_results=50000)
    return list(runs)


class SearchTracker:
    """The MLflow side of one search."""

    def __init__(self, tracking_uri: str | None, experiment: str, search_name: str,
                 params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial tables" is noise
        self.uri = resolve_tracking_uri(tracking_uri)
        exp = self._connect(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=local_artifact_root(self.uri), tags=schema.EXPERIMENT_TAGS)
        self.search_name = search_name
        parents = self._parents()
        if not parents:
            run = self.client.create_run(self.experiment_id, run_name=search_name, tags={
                SEARCH_TAG: search_name, KIND_TAG: KIND_SEARCH, **(tags or {})})
            self._log_params(run.info.run_id, params)
            # Two drivers starting one search at once may both create a parent: the earliest wins
            # and the other deletes its own, so every trial nests under one run.
            parents = self._parents()
            if parents[0].info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        self.parent_id = parents[0].info.run_id  # a resumed or shared search reuses its run
        self.client.update_run(self.parent_id, status="RUNNING")
        self._trial_runs: dict[str, str] = {}

    def _connect(self, experiment: str):
        from mlflow.tracking import MlflowClient

        # Two drivers creating one new SQLite store race on its schema migration (the client
        # migrates on creation); the loser succeeds once the winner has finished.
        def connect():
            self.client = MlflowClient(self.uri)
            return self.client.get_experiment_by_name(experiment)

        try:
            return open_with_retry(self.uri, connect, retry_on=(Exception,), backoff_s=1.0)
        except Exception as exc:
            raise ConfigError(f"cannot use the MLflow tracking store {self.uri!r}: {exc}") from None

    def _parents(self) -> list:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{SEARCH_TAG}` = '{self.search_name}' and tags.`{KIND_TAG}` = '{KIND_SEARCH}'",
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
            PARENT_TAG: self.parent_id, SEARCH_TAG: self.search_name, KIND_TAG: KIND_TRIAL,
            TRIAL_TAG: trial_id, TRIAL_NUMBER_TAG: str(number), PEFT_TAG: _describe(peft_json),
            schema.PEFT_WORDS_TAG: _describe(peft_json, words=True)})
        self._trial_runs[trial_id] = run.info.run_id
        self._log_params(run.info.run_id, params)
        self.client.log_dict(run.info.run_id, peft_json, schema.PEFT_CONFIG_ARTIFACT)
        return run.info.run_id

    def trial_result(self, trial_id: str, result: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._trial_runs[trial_id]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tags = [RunTag(schema.result_tag(k), str(v)) for k, v in result.items() if k in RESULT_TAGS]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def has_run(self, trial_id: str) -> bool:
        return trial_id in self._trial_runs

    def trial_finished(self, trial_id: str, error: str | None = None, failure: tuple[str, str] | None = None,
                       asked_again: bool = False, stopped_at_rung: int | None = None,
                       cpu_seconds: float | None = None) -> None:
        """End a trial's run: FINISHED (tagged with its rung if successive halving stopped it
        early), or FAILED with its reason tagged and traceback attached.

        ``failure`` (category, reason) when the caller knows better than the traceback says.
        """
        run_id = self._trial_runs.get(trial_id)
        if run_id is None:
            return
        if error is not None:
            self.client.log_text(run_id, error, schema.TRACEBACK_ARTIFACT)
        self._end_run(run_id, stopped_at_rung, (failure or classify_failure(error)) if error is not None else None,
                      asked_again, cpu_seconds)

    def _end_run(self, run_id: str, stopped_at_rung: int | None, failure: tuple[str, str] | None,
                 asked_again: bool, cpu_seconds: float | None) -> None:
        """Tag a trial's run with how it ended and close it: the one writer of these tags."""
        if stopped_at_rung is not None:
            self.client.set_tag(run_id, schema.STOPPED_TAG, str(stopped_at_rung))
        if failure is not None:
            category, reason = failure
            self.client.set_tag(run_id, FAILURE_TAG, category)
            self.client.set_tag(run_id, ERROR_TAG, reason[:5000])
            if asked_again:
                self.client.set_tag(run_id, ASKED_AGAIN_TAG, "true")
            if cpu_seconds is not None:  # what it spent before failing: a CPU budget counts it
                self.client.log_metric(run_id, schema.CPU_SECONDS, cpu_seconds)
        self.client.set_terminated(run_id, "FAILED" if failure is not None else "FINISHED")

    def trial_reused(self, number: int, source: int) -> bool:
        """Record trial ``number`` as answered by trial ``source``'s result (no training): a
        FINISHED run with the source's params, metrics, tags and configuration, tagged as a reuse.
        False where the source has no run to copy."""
        from mlflow.entities import Metric

        runs = [r for r in self.trial_runs() if r.data.tags.get(TRIAL_NUMBER_TAG) == str(source)]
        if not runs:
            return False
        src = runs[0]
        keep = {k: v for k, v in src.data.tags.items() if k.startswith("autopeft.") and k not in (TRIAL_TAG,)}
        run = self.client.create_run(self.experiment_id, run_name=f"{self.search_name}-t{number:03d}", tags={
            **keep, PARENT_TAG: self.parent_id, TRIAL_NUMBER_TAG: str(number), schema.REUSE_TAG: str(source)})
        # Not the source's warm-start mark: a later proposal of the same config is no hand-pick.
        self._log_params(run.info.run_id, {k: v for k, v in src.data.params.items() if k != schema.WARM_START})
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in src.data.metrics.items()]
        for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        config = self.client.download_artifacts(src.info.run_id, schema.PEFT_CONFIG_ARTIFACT)
        self.client.log_dict(run.info.run_id, json.loads(Path(config).read_text()), schema.PEFT_CONFIG_ARTIFACT)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return True

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
                    PARENT_TAG: self.parent_id, SEARCH_TAG: self.search_name, KIND_TAG: KIND_TRIAL,
                    TRIAL_NUMBER_TAG: number}).info.run_id
            self.client.set_tag(run_id, FAILURE_TAG, INTERRUPTED)
            self.client.set_tag(run_id, ERROR_TAG, "the search stopped before this trial finished; "
                                "it is asked again when the search resumes")
            self.client.set_terminated(run_id, "KILLED")

    def close_ended(self, ends: Mapping[int, TrialEnd]) -> list[int]:
        """Close the runs the study says have ended but MLflow still has RUNNING: their driver died
        between telling the study and recording the end here. Closed as the study says (FAILED
        with its reason, KILLED if interrupted, else FINISHED). A reuse whose driver died before
        its run was created, or while it was copying the source's, gets it (again) now. Returns the
        trial numbers closed or created."""
        runs = [r for r in self.trial_runs() if r.data.tags.get(TRIAL_NUMBER_TAG, "").isdigit()]
        have = {int(r.data.tags[TRIAL_NUMBER_TAG]) for r in runs}
        open_runs = {int(r.data.tags[TRIAL_NUMBER_TAG]): r for r in runs
                     if r.info.status == "RUNNING" and int(r.data.tags[TRIAL_NUMBER_TAG]) in ends}
        self.mark_interrupted([n for n in open_runs if ends[n].failure == INTERRUPTED])
        for number, run in open_runs.items():
            end = ends[number]
            if end.failure == INTERRUPTED:
                continue
            if end.reuse_of is not None:  # a copy cut short (metrics or config missing): copy again
                self.client.delete_run(run.info.run_id)
                have.discard(number)
                continue
            # The reason, where the dying driver wrote it before the kill; else only the study's category.
            reason = run.data.tags.get(ERROR_TAG) or (
                f"{end.failure} (its driver died before recording the reason here; the study holds the category)")
            self._end_run(run.info.run_id, end.stopped_at_rung, (end.failure, reason) if end.failure else None,
                          end.asked_again, end.cpu_seconds)
        reused = [n for n, end in sorted(ends.items()) if end.reuse_of is not None and n not in have
                  and self.trial_reused(n, end.reuse_of)]
        return sorted({*open_runs, *reused})

    def trial_runs(self) -> list:
        return trial_runs(self.client, self.experiment_id, self.parent_id)

    def trial_records(self) -> list[TrialRecord]:
        """Every trial of this search as the tracking store has it, whichever process ran it."""
        return schema.trial_records(self.trial_runs())

    # ------------------------------------------------------------------ search
    def log_front(self, records: Sequence[TrialRecord], metric_name: str, objectives: Sequence[str]) -> None:
        """The front as CSV and PNG on the parent run, and the search's summary metrics."""
        from mlflow.entities import Metric

        from autopeft.plots import plot_pareto

        columns = [*_FRONT_LEAD, *objectives, *(c for c in _FRONT_TAIL if c not in objectives)]
        columns += [metric_name] * (metric_name not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(records, key=lambda r: (not r.pareto, -(r.get("metric") or float("-inf")))):
            writer.writerow({c: r.get(c) for c in columns} | {metric_name: r.get("metric")})
        self.client.log_text(self.parent_id, buf.getvalue(), schema.PARETO_CSV)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_pareto(records, metric_name, Path(tmp) / Path(schema.PARETO_PNG).name, objectives,
                              title=self.search_name)
            self.client.log_artifact(self.parent_id, str(png), str(Path(schema.PARETO_PNG).parent))
        done = [r for r in records if r.status == "COMPLETE"]
        now = int(time.time() * 1000)
        summary = {"trials_completed": len(done), "trials_failed": sum(r.status == "FAILED" for r in records),
                   "trials_interrupted": sum(r.status == "INTERRUPTED" for r in records),
                   "trials_lost": sum(r.failure in LOST_FAILURES for r in records),
                   "trials_stopped": sum(r.stopped_early for r in records),
                   "trials_paused": sum(r.paused for r in records),
                   "trials_reused": sum(r.status == "REUSED" for r in records),
                   "pareto_size": sum(r.pareto for r in records),
                   schema.CPU_SECONDS: schema.cpu_seconds_spent(records)}
        if done:
            summary[f"best_{metric_name}"] = max(r["metric"] for r in done)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


_FAILURES = {"TrainingDiverged": "diverged", "TrialOutOfMemory": "out_of_memory",
             "OutOfMemoryError": "out_of_memory", "MemoryError": "out_of_memory"}


# Ray's words (GCS death causes, Ray 2.x) for a trial actor that died with its node or alone.
_NODE_DIED = "because its node has died"
_WORKER_DIED = ("because its worker process has died", "WorkerCrashedError")
# Ray's error file may hold the message without the exception's name.
_UNREACHABLE = ("ActorUnavailableError", "The actor is temporarily unavailable")


def classify_failure(traceback_text: str) -> tuple[str, str]:
    """(category, one-line reason) from a trial's traceback as Ray recorded it."""
    lines = [ln.strip() for ln in traceback_text.strip().splitlines()
             if ln.strip() and not ln.strip().startswith(schema.CPU_SECONDS_NOTE)]  # a cost, not a cause
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


def _describe(peft_json: dict, words: bool = False) -> str:
    from autopeft.config import PeftConfig

    config = PeftConfig.from_dict(peft_json)
    return (config.words() if words else config.describe())[:5000]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out
