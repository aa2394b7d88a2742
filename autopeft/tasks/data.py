"""Task data: the data dir, and one split read from local files or the Hugging Face Hub."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopeft.errors import DataError
from autopeft.tasks.spec import FORMATS_BY_EXTENSION, LocalSource, TaskSpec

DATA_DIR_ENV = "AUTOPEFT_DATA_DIR"
SPLITS = ("train", "dev")


@dataclass(frozen=True)
class Split:
    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.labels)


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


def read_local_split(task: TaskSpec, path: Path) -> Split:
    """Parse one local data file into a ``Split`` (the task's ``local.format``, else the extension)."""
    assert task.local is not None
    fmt = task.local.format_of(path)
    if fmt is None:  # parse_task checks the spec's own paths; this guards a caller's other file
        raise DataError(
            f"{path}: the extension does not say the format ({', '.join(FORMATS_BY_EXTENSION)}); "
            f"set the task's 'local.format' or rename the file."
        )
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
    where = (f"{hub.path}" + (f"@{hub.revision}" if hub.revision else "")
             + (f" (config {hub.name!r})" if hub.name else "") + f", split {split_name!r}")
    try:
        import datasets  # slow to import; only the Hub path needs it

        ds = datasets.load_dataset(hub.path, hub.name, split=split_name, revision=hub.revision)
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
