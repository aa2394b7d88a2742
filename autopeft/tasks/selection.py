"""The selection split: which rows score a run, so that choosing and reporting use different data.

A search scores every trial and picks its front (and learning rates) by that score; reporting the
winner on the same dev split flatters it. With ``select_on="holdout"`` the rows that score trials
are carved from the training split instead (seeded, so every trial, process and resumed run holds
out the same rows), the trials train on the rest, and the task's dev split stays untouched until
``autopeft train`` reports it. ``select_on="dev"`` keeps the old behaviour: trials score on dev.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from autopeft.errors import ConfigError
from autopeft.tasks.data import Split, load_split
from autopeft.tasks.spec import TaskSpec

DEV = "dev"
HOLDOUT = "holdout"
SELECT_ON = (DEV, HOLDOUT)
# A fraction of a large training split would make every trial's scoring slow (10 % of SST-2 is
# 6,735 rows, 8x its dev split); dev splits of the shipped tasks hold 56 to 1,500 rows.
HOLDOUT_MAX_ROWS = 1000


def check_selection(select_on: str, holdout_size: float) -> None:
    """Raise ConfigError for a value the options cannot mean (the CLI and budgets call this)."""
    if select_on not in SELECT_ON:
        raise ConfigError(f"--select-on (select_on) must be one of {', '.join(SELECT_ON)}, got {select_on!r}")
    if not (0 < holdout_size < 1 or (holdout_size >= 1 and float(holdout_size).is_integer())):
        raise ConfigError(
            f"--holdout-size (holdout_size) {holdout_size!r} is neither a fraction of the training split (0 < f < 1) nor a "
            f"whole number of rows (>= 1); use e.g. 0.1 or 500"
        )


def holdout_rows(n_train: int, holdout_size: float) -> int:
    """How many training rows to hold out: a fraction or a count, at most HOLDOUT_MAX_ROWS."""
    wanted = round(holdout_size * n_train) if holdout_size < 1 else int(holdout_size)
    return max(1, min(wanted, HOLDOUT_MAX_ROWS))


def split_holdout(train: Split, holdout_size: float, seed: int, where: str = "the training split") -> tuple[Split, Split]:
    """(rows to train on, held-out rows): a seeded draw, disjoint, each in file order.

    Rows are ranked by a hash of (seed, row index), not drawn by ``random``: the same seed holds out
    the same rows in every process, on every machine and Python version, so a resumed search, a
    cluster worker and ``autopeft train`` all hold out what the search held out.
    """
    n = holdout_rows(len(train), holdout_size)
    if n >= len(train):
        raise ConfigError(
            f"a holdout of {n} rows leaves nothing to train on in {where} ({len(train)} rows); "
            f"lower --holdout-size"
        )
    rank = sorted(range(len(train)), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    held = set(rank[:n])
    keep = [i for i in range(len(train)) if i not in held]
    chosen = sorted(held)
    return (Split([train.texts[i] for i in keep], [train.labels[i] for i in keep]),
            Split([train.texts[i] for i in chosen], [train.labels[i] for i in chosen]))


@dataclass(frozen=True)
class Splits:
    """What a run trains on, what scores (and selects) it, and the dev split reported at the end."""

    train: Split
    select: Split
    dev: Split
    select_on: str  # DEV or HOLDOUT: which split ``select`` is


def load_splits(task: TaskSpec, data_dir: str | os.PathLike | None, select_on: str = DEV,
                holdout_size: float = 0.1, holdout_seed: int = 0) -> Splits:
    """The task's splits for a run that selects on ``select_on`` (see the module docstring)."""
    check_selection(select_on, holdout_size)
    train, dev = load_split(task, "train", data_dir), load_split(task, "dev", data_dir)
    if select_on == DEV:
        return Splits(train, dev, dev, DEV)
    rest, held = split_holdout(train, holdout_size, holdout_seed, f"task {task.name!r}'s training split")
    return Splits(rest, held, dev, HOLDOUT)
