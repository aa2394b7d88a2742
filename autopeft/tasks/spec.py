"""Task specs: the YAML schema, the shipped-task registry, and parsing a spec into a ``TaskSpec``.

A task is a pure-data YAML file. The shipped ones sit in ``tasks/`` (one file per task, named by
the task); a user task is any YAML file passed by path.

Schema (unknown keys are an error, so typos fail loudly instead of being ignored)::

    name: sst2                      # required; the shipped file's stem must equal it
    description: Binary sentiment   # optional, free text
    labels: [negative, positive]    # class names in class-id order; absent or null = regression
    metrics: [accuracy]             # required; any of: accuracy, f1, macro_f1,
                                    #   matthews_correlation (classification), pearson, spearman
                                    #   (regression). f1 is binary F1 of class 1 (2 labels only).
    primary_metric: accuracy        # required; one of `metrics`; the search objective

    local:                          # optional; files on disk
      train: glue/SST-2/train.tsv   # required; relative to the data dir (--data-dir /
      dev: glue/SST-2/dev.tsv       #   AUTOPEFT_DATA_DIR), else to the YAML's folder; or absolute.
      format: tsv                   # optional: tsv (tab, no quoting), csv (comma, standard
                                    #   quoting) or jsonl (one object a line), for both files.
                                    #   Default: each file's extension (.tsv, .csv, .jsonl), so a
                                    #   tab-separated .txt needs `format: tsv`
      header: true                  # optional, default true; .tsv/.csv only
      columns: [a, label, b, text]  # column names of a header-less file (required iff header: false)
      text_columns: [sentence]      # required; 1 or 2 columns holding the text (a pair for 2)
      label_column: label           # required
      label_map: {"0": negative, "1": positive}
                                    # optional; raw file value -> class name. Without it the raw
                                    #   value must be a class name itself. Ignored for regression,
                                    #   where the column must parse as a float.

    hub:                            # optional; a Hugging Face Hub dataset (`datasets.load_dataset`)
      path: nyu-mll/glue            # required
      name: sst2                    # optional config name
      revision: refs/convert/parquet
                                    # optional git revision (branch, tag or commit). A repo that
                                    #   ships a loading script, which `datasets` >= 4 refuses
                                    #   ("Dataset scripts are no longer supported"), still loads
                                    #   from the Hub's Parquet export, refs/convert/parquet
      train: train                  # optional split names, defaults train / validation
      dev: validation
      text_columns: [sentence]      # required; 1 or 2
      label_column: label           # required; class ids in `labels` order (or class-name
                                    #   strings), or floats for regression

At least one of ``local`` / ``hub`` is required. Which one is read: with a data dir, ``local``;
without one, ``local`` files that exist next to the YAML (or at absolute paths), else ``hub``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autopeft._resources import registry_entries
from autopeft.errors import ConfigError
from autopeft.tasks.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS

FORMATS = ("tsv", "csv", "jsonl")
FORMATS_BY_EXTENSION = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class LocalSource:
    """Train/dev files on disk. Paths are kept as written; ``load_split`` resolves them."""

    train: str
    dev: str
    header: bool
    columns: tuple[str, ...] | None
    text_columns: tuple[str, ...]
    label_column: str
    # Pairs rather than a dict so the spec stays hashable; empty = raw values are class names.
    label_map: tuple[tuple[str, str], ...] = ()
    # One of FORMATS when the task states it; None = each file's extension decides.
    format: str | None = None

    def path_for(self, split: str) -> str:
        return self.train if split == "train" else self.dev

    def format_of(self, file: str | os.PathLike) -> str | None:
        """How ``file`` is read: the stated format, else its extension's (None if unknown)."""
        return self.format or FORMATS_BY_EXTENSION.get(Path(file).suffix.lower())


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub dataset read with ``datasets.load_dataset(path, name, split=..., revision=...)``."""

    path: str
    name: str | None
    train: str
    dev: str
    text_columns: tuple[str, ...]
    label_column: str
    revision: str | None = None  # a branch, tag or commit; None = the repo's default branch

    def split_name(self, split: str) -> str:
        return self.train if split == "train" else self.dev


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    primary_metric: str
    local: LocalSource | None
    hub: HubSource | None
    source_path: Path | None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


# --------------------------------------------------------------------------- registry / loading


def _normalise_name(name: str) -> str:
    # "SST-2", "sst_2" and "sst2" all mean the shipped sst2.
    return name.lower().replace("-", "").replace("_", "")


def available_tasks() -> dict[str, Path]:
    """Shipped tasks: name -> YAML file."""
    return registry_entries("tasks")


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text or Path(text).is_file()


def load_task(name_or_path: str) -> TaskSpec:
    """A shipped task by name (case-insensitive, '-'/'_' ignored) or a task YAML by path."""
    text = str(name_or_path)
    registry = available_tasks()
    by_key = {_normalise_name(name): path for name, path in registry.items()}
    key = _normalise_name(text)
    if key in by_key and not Path(text).is_file():
        return _parse_task_file(by_key[key])
    if _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"Task file {path} does not exist. Pass an existing task YAML, or one of the "
                f"shipped task names: {', '.join(sorted(registry))}."
            )
        return _parse_task_file(path)
    raise ConfigError(
        f"Unknown task {text!r}. Shipped tasks: {', '.join(sorted(registry))}. "
        f"A path to a task YAML file also works (schema: tasks/README.md)."
    )


def _parse_task_file(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read task file {path}: {exc}. Check the path and permissions.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Task file {path} is not valid YAML: {exc}. Fix the syntax.") from exc
    return parse_task(raw, path)


# --------------------------------------------------------------------------- schema validation

_TOP_KEYS = {"name", "description", "labels", "metrics", "primary_metric", "local", "hub"}
_LOCAL_KEYS = {"train", "dev", "format", "header", "columns", "text_columns", "label_column", "label_map"}
_HUB_KEYS = {"path", "name", "revision", "train", "dev", "text_columns", "label_column"}


def _check_keys(mapping: Any, allowed: set[str], required: set[str], where: str, path: Path | str) -> dict:
    prefix = f"{where}." if where else ""
    if not isinstance(mapping, dict):
        target = f"key '{where}'" if where else "the file"
        raise ConfigError(f"{path}: {target} must be a mapping of keys, got {type(mapping).__name__}.")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"{path}: unknown key '{prefix}{key}'. Allowed keys here: {', '.join(sorted(allowed))} "
                f"(schema: tasks/README.md)."
            )
    for key in sorted(required):
        if mapping.get(key) is None:
            raise ConfigError(f"{path}: required key '{prefix}{key}' is missing. Add it (schema: tasks/README.md).")
    return mapping


def _string(value: Any, key: str, path: Path | str) -> str:
    # YAML turns bare 0/1 into ints; accept them as the strings they look like, but not
    # yes/no/true (YAML booleans), whose text YAML has already lost.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{path}: key '{key}' must be a string, got {value!r}. Quote it in the YAML.")
    return str(value)


def _string_list(value: Any, key: str, path: Path | str, sizes: tuple[int, ...] | None = None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: key '{key}' must be a non-empty list of strings, got {value!r}.")
    items = tuple(_string(v, key, path) for v in value)
    if sizes is not None and len(items) not in sizes:
        raise ConfigError(f"{path}: key '{key}' must list 1 or 2 columns, got {len(items)}: {list(items)}.")
    if len(set(items)) != len(items):
        raise ConfigError(f"{path}: key '{key}' has duplicate entries: {list(items)}.")
    return items


def _parse_local(raw: Any, labels: tuple[str, ...] | None, path: Path | str) -> LocalSource:
    _check_keys(raw, _LOCAL_KEYS, {"train", "dev", "text_columns", "label_column"}, "local", path)
    header = raw.get("header", True)
    if not isinstance(header, bool):
        raise ConfigError(f"{path}: key 'local.header' must be true or false, got {header!r}.")
    columns = raw.get("columns")
    if header and columns is not None:
        raise ConfigError(
            f"{path}: key 'local.columns' names the columns of a header-less file; "
            f"set 'local.header: false' or remove 'local.columns'."
        )
    if not header and columns is None:
        raise ConfigError(f"{path}: 'local.header' is false, so 'local.columns' must list the column names.")
    columns = _string_list(columns, "local.columns", path) if columns is not None else None
    train = _string(raw["train"], "local.train", path)
    dev = _string(raw["dev"], "local.dev", path)
    fmt = raw.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(
            f"{path}: key 'local.format' is {fmt!r}; use one of {', '.join(FORMATS)}, or remove it to "
            f"go by the file extension."
        )
    text_columns = _string_list(raw["text_columns"], "local.text_columns", path, sizes=(1, 2))
    label_column = _string(raw["label_column"], "local.label_column", path)
    if columns is not None:
        for col in (*text_columns, label_column):
            if col not in columns:
                raise ConfigError(f"{path}: column {col!r} is not in 'local.columns' {list(columns)}.")
    label_map = _parse_label_map(raw.get("label_map"), labels, path)
    local = LocalSource(train, dev, header, columns, text_columns, label_column, label_map, fmt)
    for key, file in (("local.train", train), ("local.dev", dev)):
        file_format = local.format_of(file)
        if file_format is None:
            raise ConfigError(
                f"{path}: key '{key}' is {file!r}, whose extension does not say the format "
                f"({', '.join(FORMATS_BY_EXTENSION)}). Add 'local.format' ({', '.join(FORMATS)}) "
                f"or rename the file."
            )
        if file_format == "jsonl" and not header:
            raise ConfigError(
                f"{path}: 'local.header'/'local.columns' do not apply to JSONL file {file!r}; remove them."
            )
    return local


def _parse_label_map(raw: Any, labels: tuple[str, ...] | None, path: Path | str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if labels is None:
        raise ConfigError(f"{path}: 'local.label_map' is set but the task is a regression (no 'labels'); remove it.")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: key 'local.label_map' must map raw file values to class names, got {raw!r}.")
    pairs = []
    for value, name in raw.items():
        value = _string(value, "local.label_map", path)
        name = _string(name, f"local.label_map.{value}", path)
        if name not in labels:
            raise ConfigError(
                f"{path}: 'local.label_map' maps {value!r} to {name!r}, which is not one of labels {list(labels)}."
            )
        pairs.append((value, name))
    return tuple(pairs)


def _parse_hub(raw: Any, path: Path | str) -> HubSource:
    _check_keys(raw, _HUB_KEYS, {"path", "text_columns", "label_column"}, "hub", path)
    name, revision = raw.get("name"), raw.get("revision")
    return HubSource(
        path=_string(raw["path"], "hub.path", path),
        name=None if name is None else _string(name, "hub.name", path),
        train=_string(raw.get("train", "train"), "hub.train", path),
        dev=_string(raw.get("dev", "validation"), "hub.dev", path),
        text_columns=_string_list(raw["text_columns"], "hub.text_columns", path, sizes=(1, 2)),
        label_column=_string(raw["label_column"], "hub.label_column", path),
        revision=None if revision is None else _string(revision, "hub.revision", path),
    )


def _check_metrics(metrics: tuple[str, ...], primary: str, labels: tuple[str, ...] | None, path: Path | str) -> None:
    allowed = REGRESSION_METRICS if labels is None else CLASSIFICATION_METRICS
    kind = "regression (no 'labels')" if labels is None else "classification"
    for metric in metrics:
        if metric not in allowed:
            raise ConfigError(
                f"{path}: metric {metric!r} in 'metrics' is not available for a {kind} task. "
                f"Use any of: {', '.join(allowed)}."
            )
    if "f1" in metrics and len(labels or ()) != 2:
        raise ConfigError(f"{path}: metric 'f1' is binary F1 and needs exactly 2 labels; use 'macro_f1'.")
    if primary not in metrics:
        raise ConfigError(f"{path}: 'primary_metric' {primary!r} must be one of 'metrics' {list(metrics)}.")


def parse_task(raw: Any, path: Path | str | None = None) -> TaskSpec:
    """Validate a task mapping (as loaded from YAML) into a ``TaskSpec``; ``path`` is for messages."""
    source_path = None if path is None else Path(path).resolve()
    path = path if path is not None else "<task spec>"  # messages need a name even for in-memory specs
    if raw is None:
        raise ConfigError(f"{path}: the task file is empty. Write a task spec (schema: tasks/README.md).")
    _check_keys(raw, _TOP_KEYS, {"name", "metrics", "primary_metric"}, "", path)
    labels = raw.get("labels")
    if labels is not None:
        labels = _string_list(labels, "labels", path)
        if len(labels) < 2:
            raise ConfigError(f"{path}: 'labels' needs at least 2 classes, got {list(labels)}; omit it for regression.")
    metrics = _string_list(raw["metrics"], "metrics", path)
    primary = _string(raw["primary_metric"], "primary_metric", path)
    _check_metrics(metrics, primary, labels, path)
    if raw.get("local") is None and raw.get("hub") is None:
        raise ConfigError(f"{path}: the task needs a data source; add a 'local' or a 'hub' section (or both).")
    return TaskSpec(
        name=_string(raw["name"], "name", path),
        description=_string(raw.get("description") or "", "description", path),
        labels=labels,
        metrics=metrics,
        primary_metric=primary,
        local=None if raw.get("local") is None else _parse_local(raw["local"], labels, path),
        hub=None if raw.get("hub") is None else _parse_hub(raw["hub"], path),
        source_path=source_path,
    )
