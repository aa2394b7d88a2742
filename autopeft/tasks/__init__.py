"""Tasks: what to train on, where its data lives, and how to score it.

``spec`` owns the YAML schema and the registry of shipped tasks, ``data`` reads a task's splits
(local files or the Hugging Face Hub), ``selection`` decides which rows train a run and which
score it (dev, or rows held out of train), ``metrics`` scores predictions. Everything public is
re-exported here, so ``from autopeft.tasks import load_task`` is the one way callers import it.
"""

from autopeft.tasks.data import (
    DATA_DIR_ENV,
    SPLITS,
    Split,
    load_hub_split,
    load_split,
    read_local_split,
    resolve_data_dir,
)
from autopeft.tasks.metrics import (CLASSIFICATION_METRICS, REGRESSION_METRICS, chance_score, compute_metrics,
                                   constant_score)
from autopeft.tasks.selection import HOLDOUT, SELECT_ON, Splits, load_splits, split_holdout
from autopeft.tasks.spec import (
    FORMATS,
    FORMATS_BY_EXTENSION,
    HubSource,
    LocalSource,
    TaskSpec,
    available_tasks,
    load_task,
    parse_task,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "DATA_DIR_ENV",
    "FORMATS",
    "FORMATS_BY_EXTENSION",
    "REGRESSION_METRICS",
    "SPLITS",
    "HOLDOUT",
    "SELECT_ON",
    "HubSource",
    "LocalSource",
    "Split",
    "Splits",
    "TaskSpec",
    "available_tasks",
    "compute_metrics",
    "chance_score",
    "constant_score",
    "load_hub_split",
    "load_split",
    "load_splits",
    "load_task",
    "parse_task",
    "read_local_split",
    "resolve_data_dir",
    "split_holdout",
]
