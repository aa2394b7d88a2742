"""Task metrics: every metric a task may name, computed from predictions and references."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # spec.py imports the metric names from here
    from autopeft.tasks.spec import TaskSpec

CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearman")


def _accuracy(pred, ref) -> float:
    # numpy, not sklearn's accuracy_score (the same mean, without ~1 ms of input checks): a rung's
    # chance_score computes it a few hundred times.
    return float((pred == ref).mean())


def _f1(pred, ref) -> float:
    from sklearn.metrics import f1_score

    # Binary F1 of class 1 (GLUE's convention for MRPC); 0 rather than a warning when undefined.
    return f1_score(ref, pred, average="binary", pos_label=1, zero_division=0.0)


def _macro_f1(pred, ref, num_labels: int) -> float:
    from sklearn.metrics import f1_score

    # Fixed label list so a class missing from a small eval set still counts (as 0) in the mean.
    return f1_score(ref, pred, average="macro", labels=list(range(num_labels)), zero_division=0.0)


def _mcc(pred, ref) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(ref, pred)


def _correlation(kind: str, pred, ref) -> float:
    import numpy as np
    from scipy import stats

    # A constant prediction (e.g. a collapsed model early in a search) has no defined correlation;
    # score it 0 so the optimiser sees "no signal" instead of a NaN that fails the trial.
    if np.ptp(pred) == 0 or np.ptp(ref) == 0:
        return 0.0
    result = stats.pearsonr(pred, ref) if kind == "pearson" else stats.spearmanr(pred, ref)
    return float(result[0])


def constant_score(task: TaskSpec, references) -> float:
    """The best primary-metric score a constant prediction gets on ``references``: what a model that
    has learned no more than a prior scores (each class in turn; for regression any constant, whose
    correlations score 0)."""
    import numpy as np

    ref = np.asarray(references)
    constants = [float(ref.astype(float).mean())] if task.is_regression else range(task.num_labels)
    return max(compute_metrics(task, np.full(len(ref), c), ref)[task.primary_metric] for c in constants)


# How sure "better than chance" must be before a rung ranks a trial on its metric: the metric must
# exceed what a random guesser reaches on the same rows in this share of tries.
CHANCE_QUANTILE = 0.95
CHANCE_SHUFFLES = 200


def chance_score(task: TaskSpec, references, quantile: float = CHANCE_QUANTILE, shuffles: int = CHANCE_SHUFFLES) -> float:
    """The primary metric a model without skill reaches on these rows: the larger of what the best
    constant prediction scores (``constant_score``) and the ``quantile`` of what a guesser that
    knows only the labels' distribution scores (the references shuffled, as predictions;
    ``quantile`` 0: the constant prediction alone). On 100 rows of a balanced binary task such a
    guesser scores above 0.58 one time in twenty, so a trial at 0.56 there has shown nothing; a
    test on the trial's own predictions would not say this, since a model that predicts one class
    for all rows but one "beats" its own shuffles by that row. Seeded: the same rows, the same level."""
    return _chance_score(task, tuple(references), quantile, shuffles)


@functools.lru_cache(maxsize=64)
def _chance_score(task: TaskSpec, references: tuple, quantile: float, shuffles: int) -> float:
    # Cached: it depends on the rows' labels only, and every trial of a search scores the same rows
    # at a rung (drawn with the budget's seed), in worker processes that run trial after trial.
    import numpy as np

    ref = np.asarray(references)
    floor = constant_score(task, ref)
    if quantile <= 0:
        return floor
    rng = np.random.default_rng(0)
    metric = task.primary_metric
    guesses = [compute_metrics(task, rng.permutation(ref), ref, (metric,))[metric] for _ in range(shuffles)]
    return max(floor, float(np.quantile(guesses, quantile)))


def compute_metrics(task: TaskSpec, predictions, references, metrics: tuple[str, ...] | None = None) -> dict[str, float]:
    """Every metric in ``task.metrics`` (or those of ``metrics``) for class-id (or float,
    regression) predictions."""
    import numpy as np

    pred = np.asarray(predictions)
    ref = np.asarray(references)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(
            f"predictions and references must be 1-D and the same length, got shapes {pred.shape} and {ref.shape}"
        )
    if len(ref) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if task.is_regression:
        pred, ref = pred.astype(float), ref.astype(float)
    else:
        pred, ref = pred.astype(int), ref.astype(int)
    fns: dict[str, Callable[[], float]] = {
        "accuracy": lambda: _accuracy(pred, ref),
        "f1": lambda: _f1(pred, ref),
        "macro_f1": lambda: _macro_f1(pred, ref, task.num_labels),
        "matthews_correlation": lambda: _mcc(pred, ref),
        "pearson": lambda: _correlation("pearson", pred, ref),
        "spearman": lambda: _correlation("spearman", pred, ref),
    }
    return {metric: float(fns[metric]()) for metric in (metrics or task.metrics)}
