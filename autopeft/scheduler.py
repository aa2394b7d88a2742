"""The Ray Tune side of successive halving: a trial scheduler that asks the rung ledger
(``fidelity.RungLedger``) at every rung report whether the trial goes on. (The promotion type,
``--scheduler shp``, differs at the end of this docstring.)

Stopping-based and asynchronous (as Ray Tune's ASHA): a trial never waits for others. One that
goes on keeps training in the same process from where it is (weights, optimizer and learning-rate
schedule in memory), so promotion costs nothing; one that stops ends there and its last report is
its result. The decisions a dead driver made are not lost: the searcher stores each rung's values
in the Optuna study (``study.RUNG_VALUES_ATTR``) and a resumed search seeds its ledger from them.

The promotion type: every trial stops at its rung with its training state kept (``run_states``),
the scheduler only records the rung, and the searcher, before asking a new trial, resumes the
stopped run the ledger promotes (``RungLedger.next_promotion``) as a new trial of the study.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from autopeft.fidelity import RungLedger
from autopeft.schema import RESUME_OF, RUNG, WARM_START


class ParetoHalvingScheduler(FIFOScheduler):
    """FIFO trial order; at each rung report, CONTINUE or STOP by the ledger's Pareto ranking."""

    # Every rung report must reach ``on_trial_result``: a buffered batch could skip a rung.
    _supports_buffered_results = False

    def __init__(self, ledger: RungLedger, promotion: bool = False, keep_warm_starts: bool = True) -> None:
        super().__init__()
        self.ledger = ledger
        # The space's warm starts become the ledger's references (they go on to the full budget).
        self.keep_warm_starts = keep_warm_starts
        # The promotion type: each trial stops itself at its rung (its state kept) and the searcher
        # resumes the ones the ledger promotes later; here a rung report is only recorded.
        self.promotion = promotion

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(RUNG) is None:
            return TrialScheduler.CONTINUE
        # The ledger knows a configuration's run by the Optuna number of its first trial: the name
        # a resumed search also has for it (a trial resuming a stopped run carries ``RESUME_OF``).
        run = str(trial.config.get(RESUME_OF, trial.config["trial_number"]))
        if self.keep_warm_starts and trial.config.get(WARM_START) is not None:
            self.ledger.references.add(run)  # a hand-pick: the ledger takes it to the full budget
        if self.promotion:
            self.ledger.record(run, int(result[RUNG]), result)
            return TrialScheduler.CONTINUE
        keep = self.ledger.decide(run, int(result[RUNG]), result)
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def debug_string(self) -> str:
        seen = ", ".join(f"rung {k}: {len(r)}" for k, r in enumerate(self.ledger.records))
        return f"ParetoHalvingScheduler(eta={self.ledger.eta}; trials seen per rung: {seen})"
