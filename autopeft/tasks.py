"""Task specs: what to train on, where its data lives, and how to score it.

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
                                    #   Format from the extension: .tsv (tab, no quoting),
                                    #   .csv (comma, standard quoting), .jsonl (one object a line)
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
      train: train                  # optional split names, defaults train / validation
      dev: validation
      text_columns: [sentence]      # required; 1 or 2
      label_column: label           # required; class ids in `labels` order (or class-name
                                    #   strings), or floats for regression

At least one of ``local`` / ``hub`` is required. Which one is read: with a data dir, ``local``;
without one, ``local`` files that exist next to the YAML (or at absolute paths), else ``hub``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autopeft._resources import registry_entries
from autopeft.errors import ConfigError, DataError

DATA_DIR_ENV = "AUTOPEFT_DATA_DIR"
SPLITS = ("train", "dev")
_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}

CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearman")


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

    def path_for(self, split: str) -> str:
        return self.train if split == "train" else self.dev


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub dataset read with ``datasets.load_dataset(path, name, split=...)``."""

    path: str
    name: str | None
    train: str
    dev: str
    text_columns: tuple[str, ...]
    label_column: str

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


@dataclass(frozen=True)
class Split:
    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.labels)


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
_LOCAL_KEYS = {"train", "dev", "header", "columns", "text_columns", "label_column", "label_map"}
_HUB_KEYS = {"path", "name", "train", "dev", "text_columns", "label_column"}


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
    for key, file in (("local.train", train), ("local.dev", dev)):
        if Path(file).suffix.lower() not in _FORMATS:
            raise ConfigError(
                f"{path}: key '{key}' is {file!r}; the file format comes from the extension, which "
                f"must be one of {', '.join(_FORMATS)}. Rename or convert the file."
            )
        if _FORMATS[Path(file).suffix.lower()] == "jsonl" and not header:
            raise ConfigError(
                f"{path}: 'local.header'/'local.columns' do not apply to JSONL file {file!r}; remove them."
            )
    text_columns = _string_list(raw["text_columns"], "local.text_columns", path, sizes=(1, 2))
    label_column = _string(raw["label_column"], "local.label_column", path)
    if columns is not None:
        for col in (*text_columns, label_column):
            if col not in columns:
                raise ConfigError(f"{path}: column {col!r} is not in 'local.columns' {list(columns)}.")
    label_map = _parse_label_map(raw.get("label_map"), labels, path)
    return LocalSource(train, dev, header, columns, text_columns, label_column, label_map)


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
    name = raw.get("name")
    return HubSource(
        path=_string(raw["path"], "hub.path", path),
        name=None if name is None else _string(name, "hub.name", path),
        train=_string(raw.get("train", "train"), "hub.train", path),
        dev=_string(raw.get("dev", "validation"), "hub.dev", path),
        text_columns=_string_list(raw["text_columns"], "hub.text_columns", path, sizes=(1, 2)),
        label_column=_string(raw["label_column"], "hub.label_column", path),
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


# --------------------------------------------------------------------------- data loading


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The local data folder: the argument, else $AUTOPEFT_DATA_DIR, else None (use the Hub)."""
    origin = "--data-dir"
    if data_dir is None or str(data_dir) == "":
        data_dir, origin = os.environ.get(DATA_DIR_ENV) or None, DATA_DIR_ENV
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"Data dir {path} (from {origin}) is not a folder. Point {origin} at a folder laid out like "
            f"GLUE's (e.g. glue/SST-2/train.tsv), or unset it to download from the Hugging Face Hub."
        )
    return path


def _ways_to_provide(task: TaskSpec) -> str:
    hub = (
        f"or unset --data-dir/{DATA_DIR_ENV} to download {task.hub.path}"
        f"{'/' + task.hub.name if task.hub.name else ''} from the Hugging Face Hub with `datasets` "
        f"(needs internet or a populated HF cache)"
        if task.hub
        else f"(task {task.name!r} has no 'hub' source, so local files are the only way)"
    )
    return (
        f"To provide the data, set --data-dir or {DATA_DIR_ENV} to a folder laid out like GLUE's "
        f"(e.g. <dir>/glue/SST-2/train.tsv), {hub}."
    )


def _local_candidates(task: TaskSpec, rel: str, data_dir: Path | None) -> list[Path]:
    path = Path(rel).expanduser()
    if path.is_absolute():
        return [path]
    candidates = [data_dir / path] if data_dir is not None else []
    # A user task's paths may be relative to its own YAML, which is how it ships with its data.
    if task.source_path is not None:
        candidates.append(task.source_path.parent / path)
    return candidates


def load_split(task: TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> Split:
    """Read the ``train`` or ``dev`` split of ``task`` from local files or the Hub."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = resolve_data_dir(data_dir)
    if task.local is not None:
        candidates = _local_candidates(task, task.local.path_for(split), root)
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            return read_local_split(task, found)
        if root is not None or task.hub is None:
            looked = " or ".join(str(p) for p in candidates) or task.local.path_for(split)
            raise DataError(f"Task {task.name!r}: {split} file not found at {looked}. {_ways_to_provide(task)}")
    if task.hub is None:  # pragma: no cover - parse_task guarantees a source
        raise DataError(f"Task {task.name!r} has no data source.")
    return load_hub_split(task, split)


def _file_format(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(_FORMATS)}.") from None


def read_local_split(task: TaskSpec, path: Path) -> Split:
    """Parse one local data file into a ``Split`` (format from its extension)."""
    assert task.local is not None
    fmt = _file_format(path)
    rows = _jsonl_rows(path) if fmt == "jsonl" else _delimited_rows(path, fmt, task.local)
    to_label = _label_parser(task, task.local.label_map)
    texts: list[tuple[str, ...]] = []
    labels: list = []
    for line, row in rows:
        texts.append(tuple(_text(row, col, path, line) for col in task.local.text_columns))
        labels.append(to_label(_field(row, task.local.label_column, path, line), f"{path}, line {line}"))
    if not labels:
        raise DataError(f"{path} has no examples (task {task.name!r}). Check that it is the right file and not empty.")
    return Split(texts, labels)


def _delimited_rows(path: Path, fmt: str, local: LocalSource):
    """Yield (line number, {column: value}) for a .tsv/.csv file."""
    # GLUE TSVs contain unbalanced '"' inside fields; with quoting on, rows merge silently.
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {"delimiter": ","}
    # utf-8-sig drops MRPC's BOM, which would otherwise become part of the first column name.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, **dialect)
        if local.header:
            header = next(reader, None)
            if header is None:
                return
            columns = tuple(h.strip() for h in header)
        else:
            columns = local.columns or ()
        needed = (*local.text_columns, local.label_column)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; the file has columns {list(columns)}. "
                f"Fix the task's 'local' column names or the file's header."
            )
        for row in reader:
            if not row:
                continue
            if len(row) != len(columns):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(row)} fields where {len(columns)} columns "
                    f"{list(columns)} are expected. Check the delimiter"
                    f"{' and quoting (TSV is read with quoting off)' if fmt == 'tsv' else ' and quoting'}."
                )
            yield reader.line_num, dict(zip(columns, row))


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {line_no}: not valid JSON ({exc}). Each line must be one JSON object."
                ) from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}.")
            yield line_no, row


def _field(row: dict, column: str, path: Path, line: int) -> Any:
    if column not in row:
        raise DataError(
            f"{path}, line {line}: missing column {column!r}; this row has columns {list(row)}. "
            f"Fix the task's 'local' column names or the file."
        )
    return row[column]


def _text(row: dict, column: str, path: Path, line: int) -> str:
    value = _field(row, column, path, line)
    if value is None or isinstance(value, (dict, list)):
        raise DataError(f"{path}, line {line}: text column {column!r} holds {value!r}, not a string.")
    return value if isinstance(value, str) else str(value)


def _raw_label_text(value: Any) -> str:
    # JSON true/1 should match the YAML/label_map spellings "true"/"1".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _label_parser(task: TaskSpec, label_map: tuple[tuple[str, str], ...]) -> Callable[[Any, str], int | float]:
    """A function raw label value -> class id (or float), raising DataError with the location."""
    if task.labels is None:
        return _parse_float_label
    class_ids = {name: i for i, name in enumerate(task.labels)}
    lookup = {raw: class_ids[name] for raw, name in label_map} if label_map else class_ids
    allowed = list(lookup)

    def parse(value: Any, where: str) -> int:
        try:
            return lookup[_raw_label_text(value)]
        except KeyError:
            raise DataError(
                f"{where}: label {value!r} is not in the task's label set {allowed} (task {task.name!r}). "
                f"Fix the row, or the task's 'labels'/'local.label_map'."
            ) from None

    return parse


def _parse_float_label(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise DataError(f"{where}: regression label {value!r} is not a finite number. Fix the row.")
    return number


def load_hub_split(task: TaskSpec, split: str) -> Split:
    """Download (or read from the HF cache) one split via ``datasets.load_dataset``."""
    hub = task.hub
    assert hub is not None
    split_name = hub.split_name(split)
    where = f"{hub.path}" + (f" (config {hub.name!r})" if hub.name else "") + f", split {split_name!r}"
    try:
        import datasets  # slow to import; only the Hub path needs it

        ds = datasets.load_dataset(hub.path, hub.name, split=split_name)
    except Exception as exc:  # offline, missing dataset, bad config, ... all mean "no data"
        raise DataError(
            f"Task {task.name!r}: loading {where} from the Hugging Face Hub failed: "
            f"{type(exc).__name__}: {exc}. {_ways_to_provide(task)}"
        ) from exc
    missing = [c for c in (*hub.text_columns, hub.label_column) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"Hub dataset {where}: missing column(s) {missing}; it has {ds.column_names}. "
            f"Fix the task's 'hub' column names."
        )
    _check_hub_label_names(task, ds.features.get(hub.label_column), where)
    # One slice gives plain Python lists; per-column access returns lazy Column objects.
    batch = ds.select_columns([*hub.text_columns, hub.label_column])[:]
    texts = [tuple(str(v) for v in values) for values in zip(*(batch[c] for c in hub.text_columns))]
    labels = _hub_labels(task, batch[hub.label_column], where)
    if not labels:
        raise DataError(f"Hub dataset {where} has no examples (task {task.name!r}).")
    return Split(texts, labels)


def _check_hub_label_names(task: TaskSpec, feature: Any, where: str) -> None:
    # Hub labels arrive as ids; a ClassLabel with another order would silently swap classes.
    names = getattr(feature, "names", None)
    if task.labels is not None and names is not None and tuple(names) != task.labels:
        raise DataError(
            f"Hub dataset {where}: its class names {list(names)} differ from the task's labels "
            f"{list(task.labels)}. Make 'labels' list the classes in the dataset's id order."
        )


def _hub_labels(task: TaskSpec, values: Sequence[Any], where: str) -> list:
    if task.labels is None:
        return [_parse_float_label(v, f"{where}, row {i}") for i, v in enumerate(values)]
    by_name = {name: i for i, name in enumerate(task.labels)}
    out = []
    for i, value in enumerate(values):
        if isinstance(value, str) and value in by_name:
            out.append(by_name[value])
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(task.labels):
            out.append(value)
        else:
            raise DataError(
                f"{where}, row {i}: label {value!r} is outside the task's label set "
                f"(ids 0..{len(task.labels) - 1} or names {list(task.labels)}). Fix the task's 'labels'."
            )
    return out


# --------------------------------------------------------------------------- metrics


def _accuracy(pred, ref) -> float:
    from sklearn.metrics import accuracy_score

    return accuracy_score(ref, pred)


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


def compute_metrics(task: TaskSpec, predictions, references) -> dict[str, float]:
    """Every metric in ``task.metrics`` for class-id (or float, regression) predictions."""
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
    return {metric: float(fns[metric]()) for metric in task.metrics}
