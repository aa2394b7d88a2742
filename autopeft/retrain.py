"""A search's hand-pick lines made a verdict: each warm start and the best trial that beat it,
retrained over new seeds and scored on the dev split (``autopeft hand-picks``).

The search's own line (``results.hand_picks``) compares one training run of each, on the split the
search selected on, where the best of many trials is flattered against one warm start and one
seed's luck is as large as the gaps (benchmarks/README.md, "Rank agreement"). Here both are trained
again at the search's budget with seeds the search did not use (``budget.seed + 1`` on, after any
``--top-seeds`` ones), so the luck of the seed a trial was chosen with does not carry over, and
the verdict is the suite's rule for a win over a baseline
(benchmarks/README.md, "The suite"): a better mean by more than the larger of the two stds, or a
mean at least as good with fewer parameters ("on parameters": the lead is inside the noise).
Under ``--select-on holdout`` the dev split is one no choice was made on; under the default
``dev`` the configurations were chosen on it, which this says.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from autopeft.errors import ConfigError
from autopeft.objectives import METRIC, TRAINABLE_PARAMS
from autopeft.pareto import dominates_beyond_noise
from autopeft.results import HandPick, SearchRecord, hand_picks, to_export
from autopeft.schema import TrialRecord


@dataclass
class Retrained:
    """One trial's configuration trained again over ``seeds``: its dev metric per seed (NaN for a
    run that failed; mean and std are over the runs that did not)."""

    trial: TrialRecord
    seeds: tuple[int, ...]
    dev: list[float] = field(default_factory=list)

    @property
    def ok(self) -> list[float]:
        return [m for m in self.dev if math.isfinite(m)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ok) if self.ok else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.ok) if len(self.ok) > 1 else math.nan

    @property
    def params(self) -> int:
        return int(self.trial[TRAINABLE_PARAMS])


@dataclass
class Verdict:
    """A warm start against the best trial that beat it in the search (None: none did)."""

    pick: Retrained
    best: Retrained | None

    @property
    def outcome(self) -> str:
        """``beats`` (mean better by more than the larger std, params no more), ``beats on
        parameters`` (mean at least as good, fewer params), or ``not confirmed``."""
        if self.best is None or len(self.best.ok) < 2 or len(self.pick.ok) < 2:  # no spread to judge by
            return "not confirmed"
        best, pick = (dict(mean=r.mean, std=r.std, params=r.params) for r in (self.best, self.pick))
        if not dominates_beyond_noise(best, pick):
            return "not confirmed"
        return "beats" if best["mean"] - pick["mean"] > max(best["std"], pick["std"]) else "beats on parameters"


def candidates(record: SearchRecord, seeds: int) -> list[HandPick]:
    """The warm starts with a full-budget result (a stopped or failed one has nothing to retrain),
    to be retrained ``seeds`` times each."""
    if seeds < 2:
        raise ConfigError(f"--seeds must be at least 2 (a spread needs two runs), got {seeds}")
    picks = hand_picks(record.trials, record.directions)
    if not picks:
        raise ConfigError(f"search {record.name!r} has no warm starts (its space lists none), so there is no "
                          "hand-pick to compare with; add warm_start points to the space")
    measured = [hp for hp in picks if hp.measured]
    if not measured:
        raise ConfigError(f"no warm start of search {record.name!r} reached the full budget, so none can be "
                          "retrained against; resume it with more trials, or rerun without --halve-warm-starts")
    return measured


def to_retrain(picks: Sequence[HandPick]) -> list[TrialRecord]:
    """Each warm start and the best trial that dominates it, in that order, each trial once however
    many warm starts it beat."""
    wanted: list[TrialRecord] = []
    for hp in picks:
        for t in (hp.trial, *hp.beaten_by[:1]):
            if all(t.trial != w.trial for w in wanted):
                wanted.append(t)
    return wanted


def retrain_hand_picks(record: SearchRecord, seeds: int, data_dir: str | None,
                       on_run: Callable[[TrialRecord, int, float], None] | None = None,
                       train: Callable[[Any, int, str | None], float] | None = None, workers: int = 1) -> list[Verdict]:
    """The trials ``to_retrain`` names for the measured warm starts, trained ``seeds`` times at the
    search's budget with seeds it did not use: after the search's seed and the ones ``--top-seeds``
    added (``budget.seed + 1`` on without them). ``on_run(trial, seed, dev metric)`` after each run,
    in the order runs end; ``train(export, seed, data_dir)`` returns one run's dev metric, in this
    process (default: ``dev_metric`` in ``workers`` processes of one CPU thread each, as a search's
    trials run, so runs are comparable and two at a time do not fight over threads; measured: in the
    driver with torch's default threads beside other work, 9 SST-2 trainings took 1,464 CPU-s, about
    3x what the search's trials spent on the same budget). A run that fails is a NaN, not the end
    of the others."""
    picks = candidates(record, seeds)
    wanted = to_retrain(picks)
    first = int(record.budget.get("seed", 0)) + max(int(t.get("seeds") or 1) for t in wanted)
    done = {t.trial: Retrained(t, tuple(first + k for k in range(seeds)), [math.nan] * seeds) for t in wanted}
    jobs = [(done[t.trial], k, to_export(record, t)) for t in wanted for k in range(seeds)]

    def finish(r: Retrained, k: int, result: Callable[[], float]) -> None:
        try:
            r.dev[k] = float(result())
        except Exception as exc:  # recorded as a failed run; the other runs and configurations go on
            warnings.warn(f"retraining trial {r.trial.trial} with seed {r.seeds[k]} failed: {type(exc).__name__}: {exc}")
        if on_run is not None:
            on_run(r.trial, r.seeds[k], r.dev[k])

    if train is not None:
        for r, k, exp in jobs:
            finish(r, k, lambda: train(exp, r.seeds[k], data_dir))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(one_thread_dev_metric, exp, r.seeds[k], data_dir): (r, k) for r, k, exp in jobs}
            for future in as_completed(futures):
                finish(*futures[future], future.result)
    return [Verdict(done[hp.trial.trial], done[hp.beaten_by[0].trial] if hp.beaten_by else None) for hp in picks]


def one_thread_dev_metric(exp: Any, seed: int, data_dir: str | None) -> float:
    """``dev_metric`` in a worker process on one CPU thread, as a search's trial runs."""
    import torch

    torch.set_num_threads(1)
    return dev_metric(exp, seed, data_dir)


def dev_metric(exp: Any, seed: int, data_dir: str | None) -> float:
    """One training run of an export at its budget with ``seed``: the primary metric on dev."""
    from autopeft.tasks import load_task
    from autopeft.trial import TrialContext, run_config

    budget = exp.budget.replace(seed=seed)
    report = run_config(TrialContext(exp.model, exp.task, budget, data_dir), exp.peft, report_dev=True)
    if budget.select_on == "dev":
        return float(report[METRIC])
    return float(report[f"dev_{load_task(exp.task).primary_metric}"])


def verdict_line(v: Verdict, metric_name: str) -> str:
    """One line per warm start: both retrained means ± stds on dev, and the outcome."""
    p = v.pick
    head = (f"hand-pick (warm start {p.trial.warm_start}) trial {p.trial.trial}, {p.trial.peft}: dev {metric_name} "
            f"{p.mean:.4f} ± {p.std:.4f} over {_runs(p)}, {p.params:,} params")
    if v.best is None:
        return head + "; no trial of the search beat it, so nothing to confirm"
    b = v.best
    return (head + f"; trial {b.trial.trial}: {b.mean:.4f} ± {b.std:.4f}"
            + ("" if len(b.ok) == len(b.dev) else f" over {_runs(b)}")
            + f" ({b.mean - p.mean:+.4f}) at {b.params:,} params ({b.params / p.params:.2f}x): {v.outcome}"
            + {"beats": f" (lead beyond the larger std, {max(b.std, p.std):.4f})",
               "beats on parameters": f" (lead inside the larger std, {max(b.std, p.std):.4f})",
               "not confirmed": ""}[v.outcome])


def _runs(r: Retrained) -> str:
    failed = len(r.dev) - len(r.ok)
    return f"{len(r.dev)} seeds" + (f" ({failed} failed)" if failed else "")


def verdict_rows(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Every retrained run, a row each (the CSV ``autopeft hand-picks`` logs to MLflow)."""
    rows, seen = [], set()
    for v in verdicts:
        for role, r in (("warm start", v.pick), ("best beating it", v.best)):
            if r is None or (r.trial.trial, role) in seen:
                continue
            seen.add((r.trial.trial, role))
            rows += [{"trial": r.trial.trial, "role": role, "warm_start": v.pick.trial.warm_start, "seed": s,
                      "dev_metric": m, "trainable_params": r.params, "peft": r.trial.peft}
                     for s, m in zip(r.seeds, r.dev)]
    return rows


def log_verdicts(record: SearchRecord, verdicts: Sequence[Verdict]) -> str:
    """Record the verdicts as a run nested under the search's parent run; its id."""
    import csv
    import io
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from autopeft.schema import (EVAL_SPLIT_TAG, HAND_PICK_TAG, HAND_PICKS_ARTIFACT, KIND_HAND_PICKS, KIND_TAG,
                                 PARENT_TAG, SEARCH_TAG)

    client = MlflowClient(record.tracking_uri)
    tags = {KIND_TAG: KIND_HAND_PICKS, SEARCH_TAG: record.name, PARENT_TAG: record.parent_run_id,
            EVAL_SPLIT_TAG: "dev", **{f"{HAND_PICK_TAG}{v.pick.trial.warm_start}": v.outcome for v in verdicts}}
    run_id = client.create_run(record.experiment_id, run_name=f"hand-picks-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags=tags).info.run_id
    now = int(time.time() * 1000)
    retrained = {r.trial.trial: r for v in verdicts for r in (v.pick, v.best) if r is not None}
    client.log_batch(run_id, metrics=[Metric(f"trial{n}/dev_{k}", float(getattr(r, k)), now, 0)
                                      for n, r in retrained.items() for k in ("mean", "std")])
    rows = verdict_rows(verdicts)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    client.log_text(run_id, out.getvalue(), HAND_PICKS_ARTIFACT)
    client.set_terminated(run_id, "FINISHED")
    return run_id
