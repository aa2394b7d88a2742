"""The promotion logic of multi-objective successive halving, on fronts checked by hand."""

from __future__ import annotations

import math

import pytest

from autopeft.fidelity import (RungLedger, crowding_distance, expected_share, nondominated_sort, pareto_order,
                               promoted, promotion_minimum, promotion_order, rank_agreement_bound, rank_disagreement,
                               rate_bias, rung_fractions, rung_rows, rung_steps, spearman)
from autopeft.objectives import resolve_objectives

MAXMIN = ["max", "min"]
# (accuracy, trainable params): 0, 1 and 3 trade off; 2 is beaten by 0; 4 by 2 (and 0).
POINTS = [(0.90, 100), (0.80, 50), (0.70, 200), (0.85, 60), (0.60, 300)]


def test_nondominated_sort_hand_checked():
    assert nondominated_sort(POINTS, MAXMIN) == [[0, 1, 3], [2], [4]]
    assert nondominated_sort([(1, 1), (1, 1)], MAXMIN) == [[0, 1]], "equal points do not dominate each other"
    assert nondominated_sort([(0.5, 10, 3), (0.5, 10, 2)], ["max", "min", "min"]) == [[1], [0]]


def test_crowding_distance_hand_checked():
    # Front 0 sorted by accuracy: 1 (0.80), 3 (0.85), 0 (0.90). Ends are infinite; the middle one
    # spans (0.90 - 0.80) / 0.10 on accuracy and (100 - 50) / 50 on params: 1 + 1 = 2.
    dist = crowding_distance(POINTS, [0, 1, 3])
    assert dist[0] == dist[1] == math.inf and dist[3] == pytest.approx(2.0)
    assert crowding_distance(POINTS, [2]) == {2: math.inf}


def test_crowding_distance_prefers_the_isolated_point():
    # Four non-dominated points: 1 sits close to 0, 2 is alone in the middle of the gap.
    pts = [(0.9, 100), (0.89, 95), (0.7, 40), (0.5, 10)]
    assert nondominated_sort(pts, MAXMIN) == [[0, 1, 2, 3]]
    dist = crowding_distance(pts, [0, 1, 2, 3])
    # 1: (0.9 - 0.7)/0.4 + (100 - 40)/90 = 0.5 + 0.667; 2: (0.89 - 0.5)/0.4 + (95 - 10)/90 = 0.975 + 0.944
    assert dist[1] == pytest.approx(0.5 + 60 / 90) and dist[2] == pytest.approx(0.975 + 85 / 90)
    assert pareto_order(pts, MAXMIN) == [0, 3, 2, 1]


def test_pareto_order_by_front_then_crowding():
    assert pareto_order(POINTS, MAXMIN) == [0, 1, 3, 2, 4]


def test_crowding_ties_go_to_the_better_metric_not_the_earlier_trial():
    # Two trials on one front are both ends (infinite distance): by index the earlier goes first.
    pair = [(0.81, 26_114), (0.89, 74_498)]
    assert pareto_order(pair, MAXMIN) == [0, 1]
    assert pareto_order(pair, MAXMIN, prefer=0) == [1, 0]
    assert pareto_order(pair, ["min", "max"], prefer=0) == [0, 1], "the preferred objective's own direction"
    assert pareto_order(POINTS, MAXMIN, prefer=1) == [1, 0, 3, 2, 4], "ties only: 3's finite distance still ranks it last"
    assert promoted(pair, 1, 3, MAXMIN, prefer=0) and not promoted(pair, 0, 3, MAXMIN, prefer=0)
    # The ledger prefers the metric wherever it stands among the objectives. Measured in a suite
    # search on MPQA (rung 1): a smaller trial arrived first, then the LoRA r=8 warm start with the
    # best metric; quota 1 of 2, and by arrival order the warm start stopped.
    for keys in ("metric,trainable_params", "trainable_params,metric"):
        ledger = RungLedger(resolve_objectives(keys), rungs=3, eta=3)
        assert ledger.decide("1", 1, {"metric": 0.8084, "trainable_params": 26_114})
        assert ledger.decide("0", 1, {"metric": 0.8862, "trainable_params": 74_498}), keys


def test_promotion_quota_is_ceil_n_over_eta():
    # 5 points, eta 3: the top 2 go on (0 and 1, the ends of the front); 3 is on the front too but
    # crowded between them, so it stops.
    assert [promoted(POINTS, i, 3, MAXMIN) for i in range(5)] == [True, True, False, False, False]
    assert [promoted(POINTS, i, 2, MAXMIN) for i in range(5)] == [True, True, False, True, False], "eta 2: the top 3"
    assert promoted([(0.5, 10)], 0, 3, MAXMIN), "the first trial at a rung goes on"
    assert not promoted([(0.9, 10), (0.5, 20)], 1, 3, MAXMIN), "a dominated second trial stops"


def test_ledger_decides_asynchronously_and_ranks_params_on_a_log_scale():
    ledger = RungLedger(resolve_objectives("metric,trainable_params"), rungs=3, eta=3)
    assert ledger.decide("a", 0, {"metric": 0.6, "trainable_params": 1000})  # alone: goes on
    assert not ledger.decide("b", 0, {"metric": 0.5, "trainable_params": 2000})  # dominated by a
    assert ledger.decide("c", 0, {"metric": 0.9, "trainable_params": 10})  # dominates both
    # d ties a in the second front (both ends): the better metric takes the quota's second place.
    assert ledger.decide("d", 0, {"metric": 0.7, "trainable_params": 5000})
    assert ledger.decide("e", 0, {"metric": 0.65, "trainable_params": 3000}) is False, "crowded between a and d"
    assert ledger.decide("a", 2, {"metric": 0.1, "trainable_params": 1}), "the top rung always completes"
    # A NaN metric ranks last instead of breaking the sort.
    assert not ledger.decide("e", 0, {"metric": float("nan"), "trainable_params": 1})
    assert ledger.vector({"metric": 0.5, "trainable_params": 1000}) == (0.5, 3.0)


def test_trials_that_have_not_learned_are_not_ranked_by_size():
    # Four trials at the majority class (0.7, what a constant prediction scores on the rung's rows):
    # by Pareto rank the two smallest would go on (quota 2) and the rest stop for their size alone.
    flat = [(0.7, 5.0), (0.7, 4.0), (0.7, 4.5), (0.7, 4.8)]
    assert [promoted(flat, i, 3, MAXMIN) for i in range(4)] == [False, True, True, False]
    assert all(promoted(flat, i, 3, MAXMIN, learned=[False] * 4) for i in range(4)), "a rung that saw nothing"
    # One learned (quota 2 of 4): it goes on, and so do the others while the learned fill less than the quota.
    one = [(0.7, 5.0), (0.72, 4.0), (0.7, 4.5), (0.7, 4.8)]
    assert all(promoted(one, i, 3, MAXMIN, learned=[False, True, False, False]) for i in range(4))
    # Two learned fill the quota: the unlearned stop, and the learned rank only among themselves.
    two = [(0.7, 3.0), (0.72, 4.0), (0.75, 6.0), (0.7, 4.8)]
    assert [promoted(two, i, 3, MAXMIN, learned=[False, True, True, False]) for i in range(4)] == [
        False, True, True, False]
    assert [promoted(two, i, 3, MAXMIN) for i in range(4)] == [True, False, True, False], "by rank: the smallest"


def test_ledger_reads_no_skill_from_the_report():
    ledger = RungLedger(resolve_objectives("metric,trainable_params"), rungs=3, eta=3)
    flat = {"metric": 0.7, "no_skill": 0.7}
    assert ledger.decide("a", 0, {**flat, "trainable_params": 100})
    assert ledger.decide("b", 0, {**flat, "trainable_params": 10_000}), "not stopped for its size"
    assert ledger.decide("c", 0, {**flat, "trainable_params": 50_000})
    assert ledger.decide("d", 0, {"metric": 0.8, "no_skill": 0.7, "trainable_params": 90_000}), "learned: ranked first"
    assert ledger.decide("e", 0, {"metric": 0.75, "no_skill": 0.7, "trainable_params": 80_000}), "2 of a quota of 2"
    assert not ledger.decide("f", 0, {**flat, "trainable_params": 1}), "the learned fill the quota now"
    assert ledger.decide("g", 0, {"metric": 0.71, "no_skill": 0.7, "trainable_params": 95_000}), "3rd learned, quota 3"
    assert not ledger.decide("h", 0, {"metric": 0.705, "no_skill": 0.7, "trainable_params": 99_000}), "4th learned"
    assert [ledger.has_learned(v) for v in ({"metric": 0.7}, {"metric": float("nan"), "no_skill": 0.7},
                                             {"metric": 0.69, "no_skill": 0.7})] == [True, True, False]


def test_rung_ladder():
    assert rung_fractions(3, 3) == pytest.approx((1 / 9, 1 / 3, 1.0))
    assert rung_fractions(1, 3) == (1.0,)
    assert rung_steps(rung_fractions(3, 3), 128) == (14, 43, 128)
    assert rung_steps(rung_fractions(3, 3), 3) == (1, 2, 3), "tiny budgets keep every rung, in order"
    with pytest.raises(ValueError, match="lower --rungs"):
        rung_steps(rung_fractions(4, 3), 3)
    assert rung_rows(1 / 9, 872) == 100 and rung_rows(1 / 3, 872) == 291 and rung_rows(1.0, 872) == 872
    assert rung_rows(1 / 9, 48) == 48
    with pytest.raises(ValueError):
        rung_fractions(3, 1)


def test_promotion_minimum_before_the_first_full_trial():
    # 3 rungs, eta 3: 9 trials to rung 0 (1/9 each), 3 resumes to rung 1 (+2/9), 1 to the top (+6/9).
    worth, trials = promotion_minimum(3, 3)
    assert trials == 13 and worth == pytest.approx(9 / 9 + 3 * 2 / 9 + 6 / 9)
    assert promotion_minimum(3, 2) == (pytest.approx(4 / 4 + 2 / 4 + 2 / 4), 7)  # the tiny search in test_promotion


def test_expected_share_of_a_full_trial():
    # every trial trains 1/9; a third goes on to 1/3 (2/9 more); a ninth to the end (2/3 more)
    assert expected_share(3, 3) == pytest.approx(1 / 9 + 2 / 27 + 2 / 27)
    assert expected_share(2, 2) == pytest.approx(1 / 2 + 1 / 4)


def test_budget_total_steps():
    from autopeft.config import TrainBudget

    assert TrainBudget(train_examples=2048, batch_size=16).total_steps(67_349) == 128
    assert TrainBudget(train_examples=None, batch_size=16, epochs=3).total_steps(96) == 18
    assert TrainBudget(train_examples=100, batch_size=16, epochs=1.5).total_steps(50) == 6  # ceil(4 * 1.5)
    assert TrainBudget(train_examples=2048, max_steps=10).total_steps(67_349) == 10


def test_a_resumed_ledger_is_seeded_from_the_rung_values_the_study_holds():
    import optuna

    from autopeft.study import INTERRUPTED_ATTR, RUNG_VALUES_ATTR, rung_values

    study = optuna.create_study(directions=["maximize", "minimize"])
    for attrs in ({f"{RUNG_VALUES_ATTR}0": {"metric": 0.9, "trainable_params": 10},
                   f"{RUNG_VALUES_ATTR}1": {"metric": 0.91, "trainable_params": 10}},
                  {f"{RUNG_VALUES_ATTR}0": {"metric": 0.5, "trainable_params": 99}, INTERRUPTED_ATTR: True}):
        t = study.ask()
        for k, v in attrs.items():
            t.set_user_attr(k, v)
    assert sorted(rung_values(study.trials)) == [(0, 0, {"metric": 0.9, "trainable_params": 10}),
                                                 (0, 1, {"metric": 0.91, "trainable_params": 10})]
    ledger = RungLedger(resolve_objectives("metric,trainable_params"))
    for number, rung, values in rung_values(study.trials):
        ledger.record(str(number), rung, values)
    # The dead driver's trial 0 is still the one to beat at rung 0: a worse newcomer stops.
    assert not ledger.decide("7", 0, {"metric": 0.8, "trainable_params": 20})


def test_a_resumed_search_knows_its_warm_starts_unless_they_are_halved():
    from types import SimpleNamespace

    import optuna

    from autopeft.search import SearchSettings, _ledger
    from autopeft.study import WARM_START_ATTR

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({}, user_attrs={WARM_START_ATTR: 0})
    study.ask(), study.ask()  # trial 0, the warm start; trial 1, sampled

    def ledger(**changes):
        settings = SearchSettings(name="n", model="m", task="t", space="s", scheduler="sh", **changes)
        prep = SimpleNamespace(settings=settings, objectives=resolve_objectives("metric,trainable_params"))
        return _ledger(prep, SimpleNamespace(study=study))
    assert ledger().references == {"0"}
    assert ledger(halve_warm_starts=True).references == set()
    # A search stored before the setting existed ranked its warm starts under halving, and resumes
    # doing so; one without halving had nothing to rank (and resumes valid under fifo).
    stored = {"name": "n", "model": "m", "task": "t", "space": "s", "budget": {}}
    assert SearchSettings.from_dict({**stored, "scheduler": "sh"}).halve_warm_starts
    assert not SearchSettings.from_dict({**stored, "scheduler": "fifo"}).halve_warm_starts
    assert not SearchSettings.from_dict(stored).halve_warm_starts, "stored before schedulers: fifo"


def test_promotion_order_ranks_the_learned_then_the_rest_by_arrival():
    # POINTS by pareto_order: 0 and 1 (the ends of the front), 3 (crowded between them), then 2 and 4.
    assert promotion_order(POINTS, MAXMIN) == pareto_order(POINTS, MAXMIN)
    # 1 and 3 (the smallest) have not learned: they follow the learned, in arrival order, whatever
    # their size. Among the learned, 0 dominates 2 and 2 dominates 4.
    assert promotion_order(POINTS, MAXMIN, learned=[True, False, True, False, True]) == [0, 2, 4, 1, 3]


def _arrive_one_by_one(reports: list[dict]) -> tuple[list[bool], list[str], RungLedger]:
    """Trials reaching rung 0 of a two-rung ledger (only rung 0 decides) one at a time, a free
    worker asking after each arrival: what the stopping rule decided for each, and the trials the
    promotion rule resumed, in order (with the promotion ledger)."""
    objectives = resolve_objectives("metric,trainable_params")
    stopping, promotion = RungLedger(objectives, rungs=2, eta=3), RungLedger(objectives, rungs=2, eta=3)
    went_on, resumed = [], []
    for i, values in enumerate(reports):
        went_on.append(stopping.decide(str(i), 0, values))
        promotion.record(str(i), 0, values)
        while (nxt := promotion.next_promotion()) is not None:
            resumed.append(nxt[0])
            promotion.record(nxt[0], 1, values)  # (its top-rung value does not matter here)
    return went_on, resumed, promotion


def test_promotion_as_asha_an_improving_sampler_still_sends_most_on():
    # Nine trials of one size, each better than the last. ASHA's promotion rule (the top
    # floor(n / eta) not yet promoted): the third arrival is the first promoted, and from then on
    # each new best enters the top and goes on, while those promoted earlier stay promoted.
    # Hand-checked: 7 of 9, nearly the stopping type's 9 of 9.
    went_on, resumed, _ = _arrive_one_by_one([{"metric": 0.5 + 0.01 * i, "trainable_params": 1000} for i in range(9)])
    assert all(went_on)
    assert resumed == [str(i) for i in range(2, 9)]


def test_a_rung_that_has_seen_nothing_promotes_a_third_in_arrival_order():
    # Nine trials at chance (not learned): the stopping rule lets each on (no learned trial fills
    # the quota); the promotion rule fills floor(n / eta) in arrival order, one at n = 3, 6 and 9.
    went_on, resumed, promotion = _arrive_one_by_one(
        [{"metric": 0.5, "no_skill": 0.58, "trainable_params": 1000 * (i + 1)} for i in range(9)])
    assert all(went_on)
    assert resumed == ["0", "1", "2"]
    # A learned arrival ranks first: it takes the next free place ahead of the unlearned.
    promotion.record("9", 0, {"metric": 0.7, "no_skill": 0.58, "trainable_params": 99_000})
    promotion.record("10", 0, {"metric": 0.5, "no_skill": 0.58, "trainable_params": 10})
    promotion.record("11", 0, {"metric": 0.5, "no_skill": 0.58, "trainable_params": 10})
    assert promotion.next_promotion() == ("9", 0)


def test_blind_quota_sends_on_one_in_eta_of_the_unlearned_in_arrival_order():
    # Stopping type with blind_quota: unlearned trials take only the quota's free places. Quota
    # ceil(n / 3) frees a place at n = 1, 4 and 7; the arrival that finds it goes on.
    objectives = resolve_objectives("metric,trainable_params")
    blind = {"metric": 0.5, "no_skill": 0.58}
    ledger = RungLedger(objectives, rungs=2, eta=3, blind_quota=True)
    went_on = [ledger.decide(str(i), 0, {**blind, "trainable_params": 1000 * (i + 1)}) for i in range(9)]
    assert went_on == [True, False, False, True, False, False, True, False, False]
    # A learned arrival ranks ahead of them (n = 10, quota 4: first among the learned) ...
    assert ledger.decide("9", 0, {"metric": 0.7, "no_skill": 0.58, "trainable_params": 99_000})
    # ... and holds a place: 1 learned + 3 unlearned fill quota 4 at n = 11 and 12; n = 13 frees one.
    assert [ledger.decide(str(i), 0, {**blind, "trainable_params": 10}) for i in (10, 11, 12)] == [False, False, True]
    # A ledger reseeded from a study (a resumed search) knows who went on by their next-rung records.
    resumed = RungLedger(objectives, rungs=2, eta=3, blind_quota=True)
    for i in range(3):
        resumed.record(str(i), 0, {**blind, "trainable_params": 10})
    for i in range(2):
        resumed.record(str(i), 1, {"metric": 0.6, "trainable_params": 10})
    assert not resumed.decide("3", 0, {**blind, "trainable_params": 10}), "n = 4, quota 2, both places taken"


def test_promotion_takes_the_highest_rung_first_and_only_waiting_trials():
    ledger = RungLedger(resolve_objectives("metric,trainable_params"), rungs=3, eta=3)
    for i, m in enumerate((0.6, 0.7, 0.8)):
        ledger.record(str(i), 0, {"metric": m, "trainable_params": 100})
    assert ledger.next_promotion() == ("2", 0)
    assert ledger.next_promotion(waiting={"0", "1"}) is None, "the one to promote is running (or has no state)"
    for i, m in enumerate((0.81, 0.82, 0.83)):  # three at rung 1 (their rung 0 values are not needed)
        ledger.record(f"r{i}", 1, {"metric": m, "trainable_params": 100})
    assert ledger.next_promotion() == ("r2", 1), "a trial nearer the top goes first"
    ledger.record("r2", 2, {"metric": 0.85, "trainable_params": 100})
    assert ledger.next_promotion() == ("2", 0)


def test_warm_starts_go_on_to_the_full_budget_ahead_of_any_promotion():
    objectives = resolve_objectives("metric,trainable_params")
    # Stopping type: "w" (a warm start) is dominated by "a" and would stop (quota 1 of 2) ...
    plain = RungLedger(objectives, rungs=3, eta=3)
    assert plain.decide("a", 0, {"metric": 0.8, "trainable_params": 100})
    assert not plain.decide("w", 0, {"metric": 0.6, "trainable_params": 1000})
    # ... but a reference goes on at every rung, and is counted as gone on (blind_quota reads that).
    ledger = RungLedger(objectives, rungs=3, eta=3, references={"w"})
    assert ledger.decide("a", 0, {"metric": 0.8, "trainable_params": 100})
    assert ledger.decide("w", 0, {"metric": 0.6, "trainable_params": 1000})
    assert not ledger.decide("b", 0, {"metric": 0.5, "trainable_params": 2000}), "others still ranked"
    assert ledger.decide("w", 1, {"metric": 0.1, "trainable_params": 1000}), "even below chance"
    assert ledger.went_on[0] >= {"w"} and "w" in ledger.went_on[1]
    # Promotion type: a waiting reference is resumed before the rung's top trial, lowest rung
    # included, and only while it waits.
    promo = RungLedger(objectives, rungs=3, eta=3, references={"w"})
    for run, m in (("a", 0.9), ("b", 0.8), ("c", 0.7), ("w", 0.5)):
        promo.record(run, 0, {"metric": m, "trainable_params": 100})
    assert promo.next_promotion() == ("w", 0)
    assert promo.next_promotion(waiting={"a", "b", "c"}) == ("a", 0), "a running reference waits its turn"
    promo.record("w", 1, {"metric": 0.55, "trainable_params": 100})
    assert promo.next_promotion() == ("w", 1), "then on to the top"
    promo.record("w", 2, {"metric": 0.6, "trainable_params": 100})
    assert promo.next_promotion() == ("a", 0), "at the top: the ranking resumes"


def test_spearman_hand_checked():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties take their mean rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4) -> Pearson 0.9487.
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None


def test_rate_bias_names_a_rung_that_ranks_by_rate_against_the_full_budget():
    # MR's shape (rank_agreement.py): at rung 0 only the fast rates have left chance; at the full
    # budget they are the ones that collapsed.
    rates = [1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7e-3, 9e-3]
    at_rung = list(zip(rates, [0.48, 0.48, 0.48, 0.49, 0.52, 0.59, 0.63, 0.66]))
    at_top = list(zip(rates[:6], [0.75, 0.77, 0.78, 0.76, 0.70, 0.52]))
    rho_rung, rho_top = rate_bias(at_rung, at_top)
    assert rho_rung == pytest.approx(spearman(*zip(*at_rung))) and rho_rung > 0.9 and rho_top < 0
    assert rate_bias(at_rung, list(zip(rates[:6], [0.70, 0.72, 0.74, 0.75, 0.77, 0.78]))) is None, \
        "the full budget agrees with the rate: no bias to name"
    assert rate_bias(at_rung[:7], at_top) is None, "too few trials at the rung"
    assert rate_bias(at_rung, at_top[:4]) is None, "too few at the top"
    assert rate_bias(list(zip(rates, [0.6, 0.5, 0.7, 0.55, 0.65, 0.5, 0.6, 0.58])), at_top) is None, "the rung does not rank by rate"


def test_rank_disagreement_names_only_a_rung_confidently_unlike_the_next():
    # Eight promoted runs: (metric at the rung, at the next rung).
    at_rung = [0.60, 0.61, 0.62, 0.63, 0.64, 0.65, 0.66, 0.67]
    shuffled = [0.80, 0.78, 0.83, 0.79, 0.82, 0.77, 0.81, 0.76]  # ranks 5,3,8,4,7,2,6,1: d^2 sums to 112
    assert spearman(at_rung, shuffled) == pytest.approx(1 - 6 * 112 / (8 * 63))  # -0.33
    assert rank_disagreement(list(zip(at_rung, shuffled))) is None, "-0.33 over 8 pairs: its bound is 0.39"
    assert rank_disagreement(list(zip(at_rung, sorted(shuffled, reverse=True)))) == pytest.approx(-1.0)
    assert rank_disagreement(list(zip(at_rung, sorted(shuffled)))) is None, "the next rung kept the order"
    assert rank_disagreement(list(zip(at_rung, sorted(shuffled, reverse=True)))[:7]) is None, "too few to say"
    assert rank_disagreement(list(zip(at_rung, [0.8] * 8))) is None, "a constant next rung says nothing"
    # Near-zero agreement, as SST-2's rungs showed: the permutation i -> 17 i mod n of ranks 0..n-1.
    for n, named in ((40, True), (30, False)):
        pairs = [(i, 17 * i % n) for i in range(n)]
        rho = 1 - 6 * sum((x - y) ** 2 for x, y in pairs) / (n * (n * n - 1))  # -0.02 (n 40), +0.07 (n 30)
        bound = math.tanh(math.atanh(rho) + 1.645 * math.sqrt(1.06 / (n - 3)))  # 0.25, 0.38
        assert rank_agreement_bound(rho, n) == pytest.approx(bound)
        assert (rank_disagreement(pairs) == pytest.approx(rho)) if named else rank_disagreement(pairs) is None


def _disagreeing(ledger: RungLedger, n: int = 8) -> RungLedger:
    # n runs at rungs 0 and 1 (equal size), ranked one way at rung 0 and the other at rung 1.
    for i in range(n):
        ledger.record(f"r{i}", 0, {"metric": 0.60 + 0.01 * i, "trainable_params": 1000})
        ledger.record(f"r{i}", 1, {"metric": 0.80 - 0.01 * i, "trainable_params": 1000})
    return ledger


def test_rank_check_opens_a_rung_the_next_rung_disagreed_with():
    objectives = resolve_objectives("metric,trainable_params")
    worst = {"metric": 0.50, "trainable_params": 1000}  # below all 8 at rung 0: in no top third
    assert not _disagreeing(RungLedger(objectives, rungs=3, eta=3)).decide("new", 0, worst), "without the check"
    checked = _disagreeing(RungLedger(objectives, rungs=3, eta=3, rank_check=True))
    assert checked.decide("new", 0, worst) and checked.opened == {0}
    assert not checked.is_open(1) and not checked.is_open(2), "rung 1 has no rung-2 pairs; the top never opens"
    # Once open, open: later runs that agree (and so widen the range) do not close it.
    for i in range(8, 20):
        checked.record(f"r{i}", 0, {"metric": 0.60 + 0.01 * i, "trainable_params": 1000})
        checked.record(f"r{i}", 1, {"metric": 0.82 + 0.01 * i, "trainable_params": 1000})
    assert checked.is_open(0)
    # A ledger reseeded from the same records in their order (a resumed search) opens it too, though
    # all twenty pairs together now agree.
    reseeded = RungLedger(objectives, rungs=3, eta=3, rank_check=True)
    for i in range(20):
        for rung in (0, 1):
            if f"r{i}" in checked.records[rung]:
                reseeded.record(f"r{i}", rung, {"metric": checked.records[rung][f"r{i}"][0], "trainable_params": 1000})
    assert reseeded.opened == {0}
    assert rank_disagreement([(checked.records[0][t][0], checked.records[1][t][0]) for t in checked.records[1]]) is None
    # Seven pairs say too little.
    few = _disagreeing(RungLedger(objectives, rungs=3, eta=3, rank_check=True), n=7)
    assert not few.decide("new", 0, worst) and not few.opened


def test_rank_check_lets_the_promotion_type_resume_what_it_held_back():
    objectives = resolve_objectives("metric,trainable_params")
    for check, expect in ((False, None), (True, ("held", 0))):
        ledger = _disagreeing(RungLedger(objectives, rungs=3, eta=3, rank_check=check))
        for i in range(8):  # rung 2 agrees with rung 1, and holds every rung-1 run: nothing to resume there
            ledger.record(f"r{i}", 2, {"metric": 0.85 - 0.01 * i, "trainable_params": 1000})
        ledger.record("held", 0, {"metric": 0.50, "trainable_params": 1000})  # 9 at rung 0, 8 promoted: quota 3 is full
        assert ledger.next_promotion() == expect
