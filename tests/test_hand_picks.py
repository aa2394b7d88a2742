"""The space's warm starts (hand-picked baselines) read back against the search's trials, on
hand-built records: which trials beat each on every objective, and which trial stands for it."""

from __future__ import annotations

from autopeft.pareto import mark_front
from autopeft.results import hand_pick_line, hand_picks
from autopeft.schema import TrialRecord

DIRECTIONS = {"metric": "max", "trainable_params": "min"}


def _t(n, metric, params, status="COMPLETE", warm=None, **kw):
    return TrialRecord(trial=n, run_id=f"r{n}", status=status, peft=f"cfg{n}", warm_start=warm,
                       values={"metric": metric, "trainable_params": params}, **kw)


def test_each_warm_start_lists_the_trials_that_beat_it_on_every_objective():
    trials = mark_front([
        _t(0, 0.80, 70_000, warm=0),      # LoRA r=8-like: beaten by 3 and 4
        _t(1, 0.70, 5_000, warm=1),       # small and weak: on the front, beaten by nobody
        _t(2, 0.60, 90_000),              # dominated, beats nothing
        _t(3, 0.82, 40_000),
        _t(4, 0.81, 70_000),              # equal size, higher metric: dominates trial 0
        _t(5, 0.85, 80_000),              # better metric, larger: does not dominate trial 0
    ], DIRECTIONS)
    picks = hand_picks(trials, DIRECTIONS)
    assert [hp.trial.trial for hp in picks] == [0, 1]
    assert [b.trial for b in picks[0].beaten_by] == [3, 4], "best metric first"
    assert picks[1].beaten_by == [] and picks[1].trial.pareto
    line = hand_pick_line(picks[0], "accuracy")
    assert "warm start 0) trial 0, cfg0: accuracy 0.8000, 70,000 params" in line
    assert "by 2 trials (3, 4), best trial 3: 0.8200 (+0.0200) at 40,000 params (0.57x), one training run each" in line
    assert "no trial beats it on every objective (it is on the front)" in hand_pick_line(picks[1], "accuracy")
    # The report's form names the configuration in words where the record has them.
    picks[0].trial.peft_words = "LoRA of rank 8 on query and value in layers 0-5"
    assert "trial 0, LoRA of rank 8 on query and value in layers 0-5: " in hand_pick_line(picks[0], "accuracy", True)
    assert "trial 0, cfg0: " in hand_pick_line(picks[0], "accuracy")


def test_a_third_objective_can_keep_a_warm_start_unbeaten():
    directions = {**DIRECTIONS, "latency_ms": "min"}
    trials = [_t(0, 0.80, 70_000, warm=0), _t(1, 0.85, 40_000)]
    trials[0].values["latency_ms"], trials[1].values["latency_ms"] = 1.0, 2.0
    assert hand_picks(trials, directions)[0].beaten_by == []
    assert [b.trial for b in hand_picks(trials, DIRECTIONS)[0].beaten_by] == [1]


def test_a_warm_start_is_the_trial_its_run_reached_the_top_in():
    # Halving of the promotion type: trial 0 paused at rung 0 and trial 3 went on with its run
    # (trial_records marks trial 3 as the warm start too); a lost warm start asked again (trial 2,
    # failed, then 4) counts by its retry; a warm start stopped early has no full-budget result.
    trials = [
        _t(0, 0.55, 70_000, status="STOPPED", warm=0, resumed_by=3),
        _t(1, 0.52, 9_000, status="STOPPED", warm=1),
        _t(2, 0.0, 30_000, status="FAILED", warm=2),
        _t(3, 0.79, 70_000, warm=0, resume_of=0, resume_rung=0),
        _t(4, 0.75, 30_000, warm=2),
        _t(5, 0.80, 20_000),
    ]
    picks = hand_picks(trials, DIRECTIONS)
    assert [(hp.trial.trial, hp.measured) for hp in picks] == [(3, True), (1, False), (4, True)]
    assert [b.trial for b in picks[0].beaten_by] == [5] and [b.trial for b in picks[2].beaten_by] == [5]
    assert picks[1].beaten_by == []
    assert hand_pick_line(picks[1], "accuracy").endswith("no full-budget result (stopped early by successive halving)")
    picks[1].trial.values.update({"rung": 1.0, "fidelity": 1 / 3})
    assert hand_pick_line(picks[1], "accuracy").endswith(
        "no full-budget result (stopped early by successive halving at rung 1 (0.333 of the budget), accuracy 0.5200 there)")


def test_a_search_without_warm_starts_has_no_hand_picks():
    assert hand_picks([_t(0, 0.8, 10), _t(1, 0.9, 20)], DIRECTIONS) == []


def test_over_seeds_a_lead_is_read_against_the_larger_std():
    # --top-seeds: the metric is a mean and its std is recorded beside it.
    def seeded(n, metric, params, std, warm=None):
        t = _t(n, metric, params, warm=warm)
        t.values.update({"metric_std": std, "seeds": 2.0})
        return t

    lead = hand_picks([seeded(0, 0.80, 70_000, 0.010, warm=0), seeded(1, 0.83, 40_000, 0.020)], DIRECTIONS)[0]
    assert hand_pick_line(lead, "accuracy").endswith(
        "metric lead beyond the larger std over seeds (0.0200; 2 and 2 seeds)")
    tie = hand_picks([seeded(0, 0.80, 70_000, 0.030, warm=0), seeded(1, 0.82, 40_000, 0.005)], DIRECTIONS)[0]
    assert hand_pick_line(tie, "accuracy").endswith("metric lead within the larger std over seeds (0.0300; 2 and 2 seeds)")


def test_a_warm_start_beaten_only_by_another_is_not_beaten_by_the_search():
    # Measured on SICK-R: the size-12 adapter dominated the size-24 one, and "beaten by trial 1"
    # read as a search win and sent autopeft hand-picks to "confirm" one hand-pick against another.
    trials = mark_front([
        _t(0, 0.77, 113_000, warm=0),
        _t(1, 0.81, 58_000, warm=1),
        _t(2, 0.76, 40_000),              # beats neither warm start on every objective
        _t(3, 0.80, 100_000),             # beats warm start 0, not 1
    ], DIRECTIONS)
    picks = hand_picks(trials, DIRECTIONS)
    assert [b.trial for b in picks[0].beaten_by] == [3] and [b.trial for b in picks[0].by_hand_picks] == [1]
    assert picks[1].beaten_by == [] and picks[1].by_hand_picks == []
    without_3 = hand_picks([t for t in trials if t.trial != 3], DIRECTIONS)
    assert without_3[0].beaten_by == []
    assert hand_pick_line(without_3[0], "pearson").endswith(
        "no trial the search found beats it on every objective, but hand-pick trial 1 (warm start 1) does: "
        "0.8100 (+0.0400) at 58,000 params (0.51x)")
