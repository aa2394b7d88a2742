"""Multi-fidelity, multi-objective successive halving: pure ranking functions and the rung ledger.

A trial's budget is cut into rungs: at rung k it has trained ``fraction(k) = eta**(k - R + 1)`` of
its full budget's steps (R rungs, the last one the full budget) and scores a matching share of the
selection rows. At every rung but the last, the trial goes on only if it ranks in the top
``ceil(n / eta)`` of the ``n`` trials that have reached that rung so far (itself included):
asynchronous successive halving (ASHA, Li et al. 2020) in its stopping form, as Ray Tune's
``AsyncHyperBandScheduler`` runs it, with its single-metric ranking replaced by MO-ASHA's
(Schmucker et al. 2021, arXiv 2106.12639; Syne Tune's ``MOASHA``): non-dominated sorting over the
search's objectives, ties inside the front that straddles the cut broken by crowding distance
(NSGA-II), so the promoted trials spread along the front instead of clustering at one end.

One departure from MO-ASHA: a trial whose metric at a rung is no better than chance on the same
rows (``NO_SKILL`` in its report: the larger of a constant prediction's score and what a guesser
that knows only the label distribution reaches one time in twenty, ``tasks.chance_score``) has
shown nothing about its configuration yet. Ranked with the others it would go by its cost objectives alone, and where
no trial has learned at a rung (measured: every rung-0 trial of some MR searches at 2,048 examples
scored the majority class) halving would keep the smallest configurations and stop the rest for
their size. Such trials rank after every trial that learned, and go on while those that learned
do not fill the rung's quota: a rung that has seen nothing decides nothing. (The guesser's level
matters: measured on MR, trials at 0.56-0.65 on rung 0's 100 rows, above the majority's 0.52 but
inside what guessing reaches, went on and fell to 0.47 at the next rung, while trials stopped
beside them had reached 0.72-0.76 at the full budget in the run before the rule.)

A second: where crowding distance ties (the ends of a front are at infinite distance, and with
two trials at a rung both are ends), the better metric goes first, not the earlier arrival. A
trial's size is known before it trains; its metric is what the rung measured. Measured before
this rule: in two suite searches the LoRA r=8 warm start had the best metric at rung 1 and was
stopped there, because a smaller, worse trial had reached the rung first.

A third: the space's warm starts (``references``, the hand-picked configurations a user would
otherwise stop at) always go on to the full budget, ahead of any promotion. They are what the
search's front is read against (``results.hand_picks``); stopped at a low rung, a warm start
leaves no full-budget point to compare with (measured: the default search's size-24 serial adapter
stopped at rung 1 on SST-2), and a handful of full trainings is a small share of a search.

``ceil`` rather than ASHA's ``floor``: an asynchronous scheduler must decide at once, and with
``floor`` the first ``eta - 1`` trials at a rung (nothing to compare with yet) would all stop; with
``ceil`` a trial goes on while it is the best seen there, as Ray Tune's percentile cut-off does.

Halving of the promotion type (``RungLedger.next_promotion``; ASHA's promotion rule, Syne Tune's
and AutoGluon's ``type="promotion"``, for one objective there): a trial stops at every rung below
the top and keeps its training state (``train.TrainState``); whenever a worker is free, the highest
rung holding a trial in its top ``floor(n / eta)`` that has not gone on yet resumes that trial, and
only when none does a new trial starts. As in ASHA the promoted set only grows: a sampler whose
proposals keep improving pushes new trials into the top while the ones promoted before stay
promoted, so the share that goes on can exceed ``1 / eta`` here too (measured on MR with the GP:
0.65 at rung 1, as under the stopping type). What differs is a rung that has seen nothing: trials
that have not learned are promoted in arrival order into the quota's free places only, where the
stopping rule lets each of them on while the learned do not fill the quota (MR, rung 0: 0.35 went
on against 1.0).

Everything here is plain Python over numbers (no Ray, no Optuna): ``scheduler.py`` wraps the
ledger for Ray Tune, and the benchmark drives it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

from autopeft.objectives import METRIC, Objective
from autopeft.pareto import dominates
from autopeft.schema import NO_SKILL

DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_RUNGS = 3
# Fewer selection rows than this make a rung's metric mostly noise (one row = 1% of accuracy at
# 100 rows, and a binary task's sampling std is ~5% there): low rungs score at least this many.
MIN_RUNG_ROWS = 100


def rung_fractions(rungs: int, eta: int) -> tuple[float, ...]:
    """The share of the full budget at each rung, lowest first; the last is 1.0."""
    if rungs < 1 or eta < 2:
        raise ValueError(f"need at least 1 rung and a reduction factor of at least 2, got {rungs}, {eta}")
    return tuple(float(eta) ** (k - rungs + 1) for k in range(rungs))


def expected_share(rungs: int, eta: int) -> float:
    """What one trial trains in expectation, as a share of a full-budget trial, if exactly 1/eta
    of the trials at each rung go on: each rung adds its steps for the 1/eta**k that reach it
    (7/27 with 3 rungs, eta 3). Asynchronous promotion lets more go on, so real searches train
    more per trial than this."""
    fractions = rung_fractions(rungs, eta)
    return sum(float(eta) ** -k * (f - (fractions[k - 1] if k else 0.0)) for k, f in enumerate(fractions))


def promotion_minimum(rungs: int, eta: int) -> tuple[float, int]:
    """Halving of the promotion type: what a search must spend before its first trial reaches the
    full budget, at best (every trial learned, none failed): eta**(R-1) trials at rung 0, then
    eta**(R-2) resumes to rung 1, ..., one to the top. (Full-budget trials' worth, trials.)"""
    fractions = rung_fractions(rungs, eta)
    counts = [eta ** (rungs - 1 - k) for k in range(rungs)]
    worth = sum(n * (f - (fractions[k - 1] if k else 0.0)) for k, (n, f) in enumerate(zip(counts, fractions)))
    return worth, sum(counts)


def rung_steps(fractions: Sequence[float], total_steps: int) -> tuple[int, ...]:
    """Training steps done at each rung for a trial whose full budget is ``total_steps``.

    At least one step per rung and strictly increasing, so a tiny budget still passes every rung
    in order (the last rung is always the full budget)."""
    steps: list[int] = []
    for k, f in enumerate(fractions):
        s = total_steps if k == len(fractions) - 1 else max(1, round(f * total_steps))
        steps.append(max(s, steps[-1] + 1 if steps else 1))
    if steps[-1] != total_steps:
        raise ValueError(f"{total_steps} training steps cannot hold {len(fractions)} rungs; lower --rungs")
    return tuple(steps)


def rung_rows(fraction: float, total_rows: int) -> int:
    """Selection rows scored at a rung: its share of the split, at least MIN_RUNG_ROWS (or all)."""
    return min(total_rows, max(MIN_RUNG_ROWS, math.ceil(fraction * total_rows)))


# ----------------------------------------------------------------------------- ranking


def nondominated_sort(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Indices of ``points`` in successive fronts: front 0 is non-dominated, front 1 is
    non-dominated once front 0 is removed, and so on (each front in input order)."""
    remaining = list(range(len(points)))
    fronts: list[list[int]] = []
    while remaining:
        front = [i for i in remaining
                 if not any(dominates(points[j], points[i], directions) for j in remaining if j != i)]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def crowding_distance(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each index of ``front``: per objective, the gap between its
    two neighbours over that objective's span in the front, summed; the extremes get infinity so
    the ends of the front are always kept."""
    if len(front) <= 2:
        return {i: math.inf for i in front}
    dist = {i: 0.0 for i in front}
    for k in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: (points[i][k], i))
        lo, hi = points[ordered[0]][k], points[ordered[-1]][k]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if hi == lo or not math.isfinite(hi - lo):  # one value, or a NaN report ranked last
            continue
        for a, i, b in zip(ordered, ordered[1:], ordered[2:]):
            dist[i] += (points[b][k] - points[a][k]) / (hi - lo)
    return dist


def pareto_order(points: Sequence[Sequence[float]], directions: Sequence[str], prefer: int | None = None) -> list[int]:
    """All indices, best first: by front, inside a front by crowding distance (larger first),
    equal distances by the objective ``prefer`` (its better value first; None skips this), then
    by index (the earlier trial first, so the order is deterministic)."""
    sign = 0.0 if prefer is None else (-1.0 if directions[prefer] == "max" else 1.0)  # smaller key first
    order: list[int] = []
    for front in nondominated_sort(points, directions):
        dist = crowding_distance(points, front)
        order += sorted(front, key=lambda i: (-dist[i], sign * points[i][prefer] if sign else 0.0, i))
    return order


def promoted(points: Sequence[Sequence[float]], candidate: int, eta: int, directions: Sequence[str],
             learned: Sequence[bool] | None = None, prefer: int | None = None,
             unlearned_on: int | None = None) -> bool:
    """Whether ``points[candidate]`` is in the top ``ceil(len(points) / eta)`` by ``pareto_order``
    (``prefer``: the objective that breaks its ties).

    ``learned`` (a flag per point; default all): points that have not learned rank after those that
    have, unordered among themselves, so each goes on while the learned points fill less than the quota.
    ``unlearned_on`` (the count of other unlearned points that went on): where given, unlearned
    points fill only the quota's free places, as halving of the promotion type fills them, so a
    rung that has seen nothing sends on one in ``eta`` (in arrival order) instead of all.
    """
    quota = math.ceil(len(points) / eta)
    if learned is None or all(learned):
        return pareto_order(points, directions, prefer).index(candidate) < quota
    if not learned[candidate]:
        if unlearned_on is None:
            return sum(learned) < quota
        return min(sum(learned), quota) + unlearned_on < quota
    ranked = [i for i in range(len(points)) if learned[i]]
    return pareto_order([points[i] for i in ranked], directions, prefer).index(ranked.index(candidate)) < quota


def promotion_order(points: Sequence[Sequence[float]], directions: Sequence[str],
                    learned: Sequence[bool] | None = None, prefer: int | None = None) -> list[int]:
    """All indices, best first, for halving of the promotion type: the points that learned by
    ``pareto_order``, then those that did not in arrival order (their metric is noise, and ranked
    on their cost objectives they would go on for their small size)."""
    learned = learned if learned is not None else [True] * len(points)
    ranked = [i for i in range(len(points)) if learned[i]]
    order = [ranked[j] for j in pareto_order([points[i] for i in ranked], directions, prefer)]
    return order + [i for i in range(len(points)) if not learned[i]]


# Short-horizon bias: a rung decided by the learning rate. Measured on MR (the `small` space, 24
# random configurations, benchmarks/rank_agreement.py): rung 0's metric ranks them by their rate
# (Spearman 0.85), the full budget's against it (-0.35 and -0.69 on two seeds), because only fast
# rates leave chance in 1/9 of the steps and they are the ones that collapse by the end.
RATE_BIAS_MIN_TRIALS, RATE_BIAS_MIN_TOP = 8, 5  # fewer at the rung or at the top, and a Spearman says little
RATE_BIAS_RHO = 0.5


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None for fewer than 3 pairs or a constant side."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def rate_bias(at_rung: Sequence[tuple[float, float]], at_top: Sequence[tuple[float, float]]
              ) -> tuple[float, float] | None:
    """(Spearman at the rung, at the top) where a rung's metric ranks trials by learning rate
    (``(rate, metric)`` pairs; at least ``RATE_BIAS_MIN_TRIALS`` and ``RATE_BIAS_RHO``) while the
    full budget does not (at least ``RATE_BIAS_MIN_TOP`` trials, Spearman <= 0); else None."""
    if len(at_rung) < RATE_BIAS_MIN_TRIALS or len(at_top) < RATE_BIAS_MIN_TOP:
        return None
    rung, top = spearman(*zip(*at_rung)), spearman(*zip(*at_top))
    if rung is None or top is None or rung < RATE_BIAS_RHO or top > 0:
        return None
    return rung, top


# A rung whose order the next rung does not keep: halving there stopped trials about at random, and
# gained only by trying more configurations. Measured side by side (benchmarks/README.md, "Side by
# side", seed 0): on SST-2 no halving type's rungs ranked their promoted trials as the next rung did
# (Spearman -0.27 to 0.04 over 30-73 pairs) and halving ended behind full-fidelity GP; on SICK-R the
# promotion type's did (0.74, 0.77) and it reached GP's final front in 0.21 of GP's CPU-seconds; on
# MR neither type's did (-0.21 to 0.23) and both still ended with a larger front than GP's (1.11,
# 1.20): a reading to report, not a verdict on the scheduler. A few pairs say
# little (Spearman's standard error over 8 is about 0.4): a plain "at most 0.2 over 8 pairs",
# replayed on those runs, would have judged SICK-R's promotion-type rung 0 at its first 8 pairs.
# So a rung is named only when the data are confident its agreement is weak: the one-sided 95%
# upper bound of Spearman (Fisher's z, variance 1.06 / (n - 3), Fieller et al. 1957) is at most
# 0.3. Promoted trials are the best of their rung, a narrow range, which pulls Spearman down
# where the agreement is real: the bound is set low for that reason.
RANK_AGREEMENT_MIN_PAIRS, RANK_AGREEMENT_BOUND, RANK_AGREEMENT_Z = 8, 0.3, 1.645


def rank_agreement_bound(rho: float, n: int) -> float:
    """One-sided 95% upper confidence bound of a Spearman correlation ``rho`` over ``n`` pairs."""
    rho = max(min(rho, 0.9999), -0.9999)
    return math.tanh(math.atanh(rho) + RANK_AGREEMENT_Z * math.sqrt(1.06 / (n - 3)))


def rank_disagreement(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Spearman of (metric at a rung, at the next rung) over the runs that reached both, where
    there are at least ``RANK_AGREEMENT_MIN_PAIRS`` of them and its upper confidence bound
    (``rank_agreement_bound``) is at most ``RANK_AGREEMENT_BOUND``; else None (too few or too
    noisy to say, or the rungs agree)."""
    if len(pairs) < RANK_AGREEMENT_MIN_PAIRS:
        return None
    rho = spearman(*zip(*pairs))
    return rho if rho is not None and rank_agreement_bound(rho, len(pairs)) <= RANK_AGREEMENT_BOUND else None


# ----------------------------------------------------------------------------- the ledger


def rung_record(report: Mapping[str, float], keys: Sequence[str]) -> dict[str, float]:
    """What a rung decision reads from a trial's report, and what the study keeps of it for a
    resumed ledger: the objectives ``keys``, and ``NO_SKILL`` where the report has it."""
    return {k: report.get(k) for k in keys} | ({NO_SKILL: report[NO_SKILL]} if NO_SKILL in report else {})


@dataclass
class RungLedger:
    """What every trial scored at every rung it reached, and the promotion decision.

    ``objectives`` are the search's (their order and directions); values are compared as the
    hypervolume compares them (``Objective.scaled``: log10 for parameter counts), so crowding
    distance measures a tenfold parameter saving like a tenfold one anywhere on the axis.
    """

    objectives: Mapping[str, Objective]
    rungs: int = DEFAULT_RUNGS
    eta: int = DEFAULT_REDUCTION_FACTOR
    # Stopping type: unlearned trials fill only the quota's free places (``promoted``'s
    # ``unlearned_on``) rather than each going on while the learned leave room (``--scheduler shq``):
    # the promotion type's rule for a blind rung, without saved states.
    blind_quota: bool = False
    # Open a rung below the top once the next rung has ranked the trials it promoted unlike it did
    # (``rank_disagreement``): from then on every trial there goes on (the promotion type resumes
    # the ones it held back), as --scheduler fifo would run them, since that rung's stops were
    # about at random. An opened rung stays open (``opened``): its own promotions widen the range
    # it would be judged on again.
    rank_check: bool = False
    opened: set[int] = field(default_factory=set, init=False)  # sticky, so not derivable from the records
    # Runs that always go on to the full budget, first: the space's warm starts (``decide``,
    # ``next_promotion``). Marked as their reports arrive, and from the study on resume.
    references: set[str] = field(default_factory=set)
    records: list[dict[str, tuple[float, ...]]] = field(default_factory=list)
    learned: list[dict[str, bool]] = field(default_factory=list)  # beside records: beat a constant prediction?
    went_on: list[set[str]] = field(default_factory=list)  # decided to go on here, by this ledger

    def __post_init__(self) -> None:
        rung_fractions(self.rungs, self.eta)  # validates
        self.records = [dict() for _ in range(self.rungs)]
        self.learned = [dict() for _ in range(self.rungs)]
        self.went_on = [set() for _ in range(self.rungs)]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives.values()]

    def vector(self, values: Mapping[str, float]) -> tuple[float, ...]:
        """The objectives of a report in ranking form. A report missing one, or holding a NaN, is
        worst on every objective: a trial without a metric must not be kept for its small size."""
        raw = [values.get(key) for key in self.objectives]
        if any(v is None or not math.isfinite(float(v)) for v in raw):
            return tuple(-math.inf if o.direction == "max" else math.inf for o in self.objectives.values())
        return tuple(o.scaled(float(v)) for v, o in zip(raw, self.objectives.values()))

    @staticmethod
    def has_learned(values: Mapping[str, float]) -> bool:
        """False only for a finite metric at or below the report's ``NO_SKILL`` (a report without it,
        from a task or search that does not say, counts as learned; a NaN ranks last anyway)."""
        metric, floor = values.get(METRIC), values.get(NO_SKILL)
        if metric is None or floor is None or not math.isfinite(float(metric)):
            return True
        return float(metric) > float(floor) + 1e-9

    def record(self, trial: str, rung: int, values: Mapping[str, float]) -> None:
        self.records[rung][trial] = self.vector(values)
        self.learned[rung][trial] = self.has_learned(values)
        if self.rank_check and rung > 0 and rung - 1 not in self.opened:
            # Judged only here, as each next-rung pair arrives (nothing else changes the pairs), so a
            # ledger reseeded on resume opens what the run opened, in the same order.
            m = list(self.objectives).index(METRIC)
            below, here = self.records[rung - 1], self.records[rung]
            pairs = [(below[t][m], v[m]) for t, v in here.items()
                     if t in below and math.isfinite(below[t][m]) and math.isfinite(v[m])]
            if rank_disagreement(pairs) is not None:
                self.opened.add(rung - 1)

    def is_open(self, rung: int) -> bool:
        """Whether ``rung`` lets every trial on (``rank_check``: opened by ``record``, then kept)."""
        return rung in self.opened

    def decide(self, trial: str, rung: int, values: Mapping[str, float]) -> bool:
        """Record ``trial``'s values at ``rung`` and say whether it goes on (the top rung always does)."""
        self.record(trial, rung, values)
        if rung >= self.rungs - 1:
            return True
        if trial in self.references or self.is_open(rung):
            self.went_on[rung].add(trial)
            return True
        ids = list(self.records[rung])
        unlearned_on = None
        if self.blind_quota:  # went on: decided so here, or seen at the next rung (a ledger reseeded on resume)
            on = self.went_on[rung] | set(self.records[rung + 1])
            unlearned_on = sum(1 for t in ids if t != trial and t in on and not self.learned[rung][t])
        go_on = promoted([self.records[rung][t] for t in ids], ids.index(trial), self.eta, self.directions,
                         [self.learned[rung][t] for t in ids], prefer=list(self.objectives).index(METRIC),
                         unlearned_on=unlearned_on)
        if go_on:
            self.went_on[rung].add(trial)
        return go_on

    def next_promotion(self, waiting: Collection[str] | None = None) -> tuple[str, int] | None:
        """Halving of the promotion type: (trial, rung) of the trial to resume next, or None (start a
        new one). A reference (``references``) below the top first, highest rung first; then, highest
        rung first, the best of the top ``floor(n / eta)`` trials by ``promotion_order`` (all of them
        at an open rung: ``is_open``) that has not reached the next rung. ``waiting``: the trials
        that can be resumed (those whose state is kept and that are not running); default all."""
        for rung in range(self.rungs - 2, -1, -1):
            for run in self.records[rung]:  # in arrival order
                if run in self.references and run not in self.records[rung + 1] and (waiting is None or run in waiting):
                    return run, rung
        for rung in range(self.rungs - 2, -1, -1):
            ids = list(self.records[rung])
            order = promotion_order([self.records[rung][t] for t in ids], self.directions,
                                    [self.learned[rung][t] for t in ids], prefer=list(self.objectives).index(METRIC))
            for i in order[:len(ids) if self.is_open(rung) else len(ids) // self.eta]:
                if ids[i] not in self.records[rung + 1] and (waiting is None or ids[i] in waiting):
                    return ids[i], rung
        return None
