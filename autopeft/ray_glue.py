"""The Ray Tune side of a search: the searcher that asks Optuna, and the callbacks that mirror trial
events into MLflow and the progress bar. Thin glue: the study, tracker and trainable are made
elsewhere (``search.py``); this module only adapts them to Ray Tune's hooks.

Importing it sets Ray's environment switches before Ray is imported, so only modules that run a
search pay for (and are affected by) importing Ray.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters need no token
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is our logger
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar replaces Ray's tables
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches us: we mark and save
from ray.tune import Callback  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from autopeft.objectives import METRIC  # noqa: E402
from autopeft.fidelity import rung_record  # noqa: E402
from autopeft.schema import CPU_SECONDS, FIDELITY, RUNG, RUNGS, TRAINED  # noqa: E402


_MAX_REFUSALS = 50

# OptunaSearch times the define-by-run call, which includes the sampler's own work (a GP
# sampler fits its model there, seconds per trial by design), and warns that training may be
# happening in it: it is not, and users cannot act on the warning.
warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default spells out the whole config


class StudySearcher(OptunaSearch):
    """Ray's OptunaSearch, plus the facts the study must keep: which driver asked each trial (so a
    resumed search can tell its dead trials from a live cooperating process's), the trial target
    of the whole study (asked atomically, so several drivers stop together at exactly the
    target), why each failed trial failed (a lost one's configuration is asked again), under
    successive halving each rung's values and the fidelity a trial's values were measured at, and
    the search's constraints (``limits``: objective key -> (objective, bound)) as Optuna
    constraints, so the sampler steers away from what breaks them."""

    # While the study is at its target and trials still run, Tune asks for a trial every step
    # (10 a second): look at the study at most this often.
    _WAIT_POLL_S = 1.0

    def __init__(self, *args: Any, target: int, owner: str, retry_lost_trials: int = 0,
                 limits: dict[str, tuple[Any, float]] | None = None, vetting: Any = None,
                 on_reuse: Callable[[int, int], None] | None = None, cpu_budget_s: float | None = None,
                 full_trials: float | None = None, promotions: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target, self._owner, self._limits = target, owner, limits or {}
        self._cpu_budget_s, self._full_trials = cpu_budget_s, full_trials
        self._retry_lost = retry_lost_trials
        self._failed: set[str] = set()  # failed, not yet told: record_failure comes first
        self._waited_at = 0.0
        # reuse.Vetting: duplicates are answered from the study, too-small configs refused; both
        # without a Ray trial. on_reuse(number, source number) records a reuse in MLflow.
        self._vetting, self._on_reuse = vetting, on_reuse
        # Halving of the promotion type: (RungLedger, RunStates). Before a new trial is asked, a
        # stopped run the ledger promotes is claimed and its continuation enqueued.
        self._promotions = promotions

    def suggest(self, trial_id: str):
        from autopeft.reuse import tell_refused, tell_reuse
        from autopeft.schema import RESUME_OF, RESUME_RUNG, WARM_START
        from autopeft.study import (CONTINUES_ATTR, FULL, RESUMES_RUNG_ATTR, WAIT, WARM_START_ATTR, ask_within_target,
                                    resumes)

        refusals = 0
        while True:
            if trial_id not in self._ot_trials:
                if time.monotonic() - self._waited_at < self._WAIT_POLL_S:
                    return None
                if self._promotions is not None:
                    self._enqueue_promotion()
                ot_trial = ask_within_target(self._ot_study, self._target, self._owner, self._cpu_budget_s,
                                             self._full_trials)
                if ot_trial == FULL:
                    return Searcher.FINISHED
                if ot_trial == WAIT:
                    self._waited_at = time.monotonic()
                    return None
                self._ot_trials[trial_id] = ot_trial
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            resumed = resumes(ot_trial)
            if resumed:  # goes on with a stopped run: its config is the run's, already vetted
                if self._vetting is not None:
                    self._vetting.stamp(ot_trial, config)
                return {**config, "trial_number": ot_trial.number, RESUME_OF: resumed[CONTINUES_ATTR],
                        RESUME_RUNG: resumed[RESUMES_RUNG_ATTR]}
            verdict, detail = ("run", None) if self._vetting is None else self._vetting.check(
                self._ot_study.get_trials(deepcopy=False), ot_trial, config)
            if verdict == "run":
                warm = ({WARM_START: ot_trial.user_attrs[WARM_START_ATTR]} if WARM_START_ATTR in ot_trial.user_attrs
                        else {})
                return {**config, "trial_number": ot_trial.number, **warm}
            del self._ot_trials[trial_id]  # answered without Ray: the next round asks a new trial
            if verdict == "reuse":
                tell_reuse(self._ot_study, ot_trial, detail)
                if self._on_reuse is not None:
                    self._on_reuse(ot_trial.number, detail.number)
                continue
            tell_refused(self._ot_study, ot_trial, detail)
            refusals += 1
            # Refusals are not counted, so a sampler stuck on refused configs would never reach
            # the target: give up after this many in a row.
            if refusals >= _MAX_REFUSALS:
                warnings.warn(f"the sampler proposed {_MAX_REFUSALS} configurations in a row that the space "
                              "refuses (min_peft_params); the search stops here")
                return Searcher.FINISHED

    def _enqueue_promotion(self) -> None:
        """Halving of the promotion type: if the ledger promotes a stopped run whose state is kept
        and this driver claims it, enqueue the trial that resumes it (asked before any new one).
        One at a time: while a resuming trial waits to be asked, nothing more is promoted."""
        import optuna

        from autopeft.study import CONTINUES_ATTR, RESUMES_RUNG_ATTR, target_reached

        ledger, states = self._promotions
        trials = self._ot_study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return  # warm starts, trials asked again, or a resume: asked first anyway
        if target_reached(trials, self._target, self._cpu_budget_s, self._full_trials):
            return  # nothing more is asked: a claimed state would wait for a resumed search
        promote = ledger.next_promotion(states.waiting())
        if promote is None or not states.claim(promote[0]):
            return
        root, rung = int(promote[0]), promote[1]
        first = trials[root]  # numbers are positions in the study
        self._ot_study.enqueue_trial(first.params, user_attrs={CONTINUES_ATTR: root, RESUMES_RUNG_ATTR: rung},
                                     skip_if_exists=False)

    def save(self, checkpoint_path: str) -> None:
        # Ray pickles the searcher's state into its experiment folder; the vetting and reuse hooks
        # hold closures and the MLflow client, and a resumed search rebuilds them anyway.
        hooks = self._vetting, self._on_reuse, self._promotions
        self._vetting = self._on_reuse = self._promotions = None
        try:
            super().save(checkpoint_path)
        finally:
            self._vetting, self._on_reuse, self._promotions = hooks

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._keep_rung_values(trial_id, result)
        super().on_trial_result(trial_id, result)

    def _keep_rung_values(self, trial_id: str, result: dict) -> None:
        from autopeft.study import RUNG_VALUES_ATTR

        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result.get(RUNG) is not None:
            ot_trial.set_user_attr(f"{RUNG_VALUES_ATTR}{int(result[RUNG])}", rung_record(result, self.metric))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from autopeft.study import CPU_SECONDS_ATTR, FIDELITY_ATTR, RUNG_ATTR, STOPPED_ATTR, TRAINED_ATTR

        # Ray calls this before the callbacks' on_trial_error, which alone read the error; a
        # failed trial's reason must be in the study before it is told FAIL (then it is frozen).
        if error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._failed.add(trial_id)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and not error and trial_id not in self._completed_trials:
            if result.get(RUNG) is not None:  # told at the highest rung reached: say which
                # Ray skips on_trial_result for the report its scheduler stops a trial on.
                self._keep_rung_values(trial_id, result)
                rung = int(result[RUNG])
                ot_trial.set_user_attr(RUNG_ATTR, rung)
                ot_trial.set_user_attr(FIDELITY_ATTR, float(result[FIDELITY]))
                if rung < int(result[RUNGS]) - 1:
                    ot_trial.set_user_attr(STOPPED_ATTR, rung)
            if result.get(CPU_SECONDS) is not None:  # what --cpu-budget-s adds up, for every driver
                ot_trial.set_user_attr(CPU_SECONDS_ATTR, float(result[CPU_SECONDS]))
            if result.get(TRAINED) is not None:  # what --full-trials counts for it (resumes, seeds)
                ot_trial.set_user_attr(TRAINED_ATTR, float(result[TRAINED]))
            for key, (objective, bound) in self._limits.items():
                value = result.get(key)
                if value is not None and math.isfinite(float(value)):
                    ot_trial.set_constraint(key, objective.violation(float(value), bound))
        super().on_trial_complete(trial_id, result, error)
        # A trial that ends is what changes a waiting study's answer (FULL once none runs): look
        # at once. Tune polls a searcher that has nothing with a 1 s sleep, so the throttle would
        # otherwise hold the end of every search a second or two.
        self._waited_at = 0.0

    def record_failure(self, trial_id: str, category: str, cpu_seconds: float | None = None) -> bool:
        """Record why ``trial_id`` failed (and what it spent), ask it again if it was lost, tell it
        FAIL; asked again?"""
        from autopeft.study import record_failure

        if trial_id not in self._failed:
            return False
        self._failed.discard(trial_id)
        try:
            return record_failure(self._ot_study, self._ot_trials[trial_id]._trial_id, category, self._retry_lost,
                                  cpu_seconds)
        finally:
            super().on_trial_complete(trial_id, error=True)
            self._waited_at = 0.0


# What Ray adds to every reported result; the rest is the trial's own report.
_RAY_RESULT_KEYS = ("config", "time_", "timestamp", "pid", "date", "hostname", "iterations", "done",
                    "training_iteration", "trial_id", "experiment_tag", "checkpoint_dir_name", "should_checkpoint")


class TrackingCallback(Callback):
    """Mirror Ray trial events into MLflow runs (and each failure's reason into the study)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.searcher: StudySearcher | None = None
        self._dead_nodes: dict[str, set[str]] = {}  # per running trial: the nodes dead when it started
        self.asked_again: set[str] = set()  # lost trials whose configuration runs again (not progress)
        self.failed_cpu: dict[str, float] = {}  # failed trials: the CPU-s their traceback noted

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
        self.tracker.trial_result(trial.trial_id, keep, step=int(keep.get(RUNG) or 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._dead_nodes.pop(trial.trial_id, None)
        last = trial.last_result or {}
        stopped = last.get(RUNG) is not None and int(last[RUNG]) < int(last[RUNGS]) - 1
        self.tracker.trial_finished(trial.trial_id, stopped_at_rung=int(last[RUNG]) if stopped else None)

    def on_trial_error(self, iteration, trials, trial, **info):
        from autopeft.cluster import lost_with_node
        from autopeft.schema import NODE_LOST, WORKER_LOST, failed_cpu_seconds
        from autopeft.tracking import UNREACHABLE, classify_failure

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
        cpu = failed_cpu_seconds(error)
        if cpu is not None:
            self.failed_cpu[trial.trial_id] = cpu
        asked_again = self.searcher.record_failure(trial.trial_id, category, cpu) if self.searcher else False
        if asked_again:
            self.asked_again.add(trial.trial_id)
        self.tracker.trial_finished(trial.trial_id, error=error, failure=(category, reason), asked_again=asked_again,
                                    cpu_seconds=cpu)


def _read_error(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    text = Path(path).read_text() if path and os.path.exists(path) else ""
    text = text or str(getattr(trial, "error_msg", "") or "trial failed (no error file)")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours its tracebacks


class ProgressCallback(Callback):
    """A progress bar over trials with the best metric so far; under a CPU budget over its
    CPU-seconds, under ``--full-trials`` over full-budget trials' worth of training (trials
    counted in the description)."""

    def __init__(self, total: int, metric_name: str, enabled: bool, done: int = 0,
                 asked_again: set[str] | None = None, cpu_budget_s: float | None = None,
                 cpu_done: float = 0.0, failed_cpu: dict[str, float] | None = None,
                 full_trials: float | None = None, trainings_done: float = 0.0) -> None:
        self.total, self.metric_name, self.enabled, self.done = total, metric_name, enabled, done
        # What the bar counts: the budget that ends the search (a CPU budget first, as it is the
        # one a user set when both are given), and what one finished trial adds to it.
        if cpu_budget_s:
            self.unit, self.bar_total, self.bar_done = "CPU-s", cpu_budget_s, cpu_done
        elif full_trials:
            self.unit, self.bar_total, self.bar_done = "full trials", full_trials, trainings_done
        else:
            self.unit, self.bar_total, self.bar_done = "", total, done
        self.best: float | None = None
        self.failed = 0
        self.asked_again = asked_again if asked_again is not None else set()  # filled by TrackingCallback
        self.failed_cpu = failed_cpu if failed_cpu is not None else {}  # likewise

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            count = (TextColumn("{task.completed:.1f}/{task.total:g}") if self.unit == "full trials"
                     else MofNCompleteColumn())
            unit = [TextColumn(self.unit)] if self.unit else []
            self.progress = Progress(TextColumn("[bold]search"), BarColumn(), count, *unit,
                                     TimeElapsedColumn(), TextColumn("{task.description}"))
            self.progress.start()
            self.task = self.progress.add_task("starting", total=self.bar_total, completed=self.bar_done)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def _cost(self, trial: Any, failed: bool) -> float:
        result = trial.last_result or {}
        if self.unit == "CPU-s":
            return self.failed_cpu.get(trial.trial_id, 0.0) if failed else result.get(CPU_SECONDS, 0.0)
        if self.unit == "full trials":  # as study.trainings_spent counts it: a failed trial, nothing
            return 0.0 if failed else float(result.get(TRAINED, result.get(FIDELITY, 1.0)))
        return 1.0

    def _update(self, trial: Any, failed: bool = False) -> None:
        if not self.enabled:
            return
        self.done += 1
        best = f"best {self.metric_name} {self.best:.4f}" if self.best is not None else "no result yet"
        extra = f", {self.failed} failed" if self.failed else ""
        if self.unit:  # the bar counts a budget: say how many trials it bought
            extra = f", {self.done} trial{'s' * (self.done != 1)}{extra}"
        self.progress.update(self.task, advance=self._cost(trial, failed), description=f"{best}{extra}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(METRIC)
        if result.get(RUNG) is not None and int(result[RUNG]) < int(result[RUNGS]) - 1:
            return  # a low rung's metric is not a result to show as the best
        if value is not None and (self.best is None or value > self.best):
            self.best = value

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id in self.asked_again:  # its retry will advance the bar
            return
        self.failed += 1
        self._update(trial, failed=True)
