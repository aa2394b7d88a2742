"""Typed, immutable configs and their JSON form.

``PeftConfig`` is what a search samples and a user exports: an ordered tuple of method entries,
each a frozen dataclass from ``autopeft.methods``. Several entries of one method may coexist on
different layers (a per-layer size) or, for LoRA/(IA)3, with different targets (a per-module rank
and layer mask). ``TrainBudget`` is the short-training budget of a trial.
Every config serialises to plain JSON with a schema version and loads back equal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, TypeVar

from autopeft.errors import ConfigError
from autopeft.methods import MethodConfig, get_method

SCHEMA_VERSION = 1

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``, naming unknown keys instead of a TypeError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # wrong argument types reaching __post_init__ comparisons
        raise ConfigError(f"{where}: {exc}") from None


def method_to_dict(entry: MethodConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"method": entry.method}
    for f in fields(entry):
        value = getattr(entry, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def method_from_dict(data: Mapping[str, Any], where: str = "method") -> MethodConfig:
    if not isinstance(data, Mapping) or "method" not in data:
        raise ConfigError(f"{where}: each entry needs a 'method' key, got {data!r}")
    spec = get_method(data["method"])
    body = {k: v for k, v in data.items() if k != "method"}
    return dataclass_from_dict(spec.config_cls, body, f"{where} ({spec.name})")


def _claim_modules(entries: tuple[MethodConfig, ...]) -> tuple[tuple[MethodConfig, ...], list[str]]:
    """Walk the entries in order, each module-wrapping one claiming its (target, layer) cells:
    the entries trimmed to the cells still free, and a line for each entry that found some taken."""
    owner: dict[tuple[str, int], MethodConfig] = {}
    kept: list[MethodConfig] = []
    clashes: list[str] = []
    for e in entries:
        if not get_method(e.method).wraps_modules:
            kept.append(e)
            continue
        free: dict[tuple[int, ...], list[str]] = {}  # free layers -> the targets free there
        for target in e.targets:
            taken = [i for i in e.layers if (target, i) in owner]
            if taken:
                clashes.append(f"{owner[target, taken[0]].describe()} and {e.describe()} both adapt {target} "
                               f"in layer(s) {taken}")
            layers = tuple(i for i in e.layers if (target, i) not in owner)
            if layers:
                free.setdefault(layers, []).append(target)
        for layers, targets in free.items():
            kept.append(dataclasses.replace(e, layers=layers, targets=tuple(targets)))
        for target in e.targets:
            for i in e.layers:
                owner.setdefault((target, i), e)
    return tuple(kept), clashes


@dataclass(frozen=True)
class PeftConfig:
    """A hybrid PEFT configuration: which methods, where, and how large."""

    methods: tuple[MethodConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        for name, entries in self.by_method().items():
            spec = get_method(name)
            if spec.max_entries is not None and len(entries) > spec.max_entries:
                raise ConfigError(f"{name}: at most {spec.max_entries} entry allowed, got {len(entries)}")
            if spec.per_layer and any(not e.layers for e in entries):
                raise ConfigError(f"{name}: an entry has no layers; place it on at least one layer or drop it")
            if spec.one_per_layer:
                seen: set[int] = set()
                for e in entries:
                    overlap = seen & set(e.layers)
                    if overlap:
                        raise ConfigError(f"{name}: layer(s) {sorted(overlap)} appear in two {name} entries")
                    seen |= set(e.layers)

    def module_clashes(self) -> list[str]:
        """Where two entries of module-wrapping methods (LoRA, (IA)3; ``MethodSpec.wraps_modules``)
        adapt one module in one layer, which `adapters` cannot train; one line per clash."""
        return _claim_modules(self.methods)[1]

    def without_module_clashes(self) -> "PeftConfig":
        """This config with each clashing module left to the entry that comes first: later entries
        keep only the modules and layers still free (an entry left with none is dropped)."""
        return PeftConfig(_claim_modules(self.methods)[0])

    def by_method(self) -> dict[str, list[MethodConfig]]:
        groups: dict[str, list[MethodConfig]] = {}
        for entry in self.methods:
            groups.setdefault(entry.method, []).append(entry)
        return groups

    def check_model(self, num_layers: int) -> None:
        for entry in self.methods:
            entry.check_model(num_layers)

    def describe(self) -> str:
        return " + ".join(e.describe() for e in self.methods) or "head only"

    def words(self) -> str:
        """The configuration in words, for readers of the report (``describe`` is the compact form)."""
        return "; ".join(e.words() for e in self.methods) or "the task head only"

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "methods": [method_to_dict(e) for e in self.methods]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PeftConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"PEFT config: expected a mapping, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"PEFT config: schema_version {version} is not supported by this autopeft "
                f"(it reads version {SCHEMA_VERSION})"
            )
        unknown = sorted(set(data) - {"schema_version", "methods"})
        if unknown:
            raise ConfigError(f"PEFT config: unknown key(s) {unknown}; allowed: ['methods', 'schema_version']")
        entries = data.get("methods", [])
        if not isinstance(entries, list):
            raise ConfigError("PEFT config: 'methods' must be a list")
        return cls(tuple(method_from_dict(e, f"methods[{i}]") for i, e in enumerate(entries)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def canonical(self) -> str:
        """One text per model this config builds, however its entries are split or ordered: a
        space searching LoRA per module writes "r=8 on query+value" as two entries, a person as one."""
        parts = set()
        for entry in self.methods:
            d = method_to_dict(entry)
            for target in d.pop("targets", None) or [None]:
                parts.add(json.dumps({**d, "targets": target}, sort_keys=True))
        return json.dumps(sorted(parts))

    @classmethod
    def from_json(cls, text: str) -> "PeftConfig":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class TrainBudget:
    """How one configuration is trained and evaluated."""

    # Defaults: the smallest budget measured to separate configs on SST-2 with all-MiniLM-L6-v2
    # (serial adapter 24: 0.77 dev accuracy; 256 examples give ~0.55, which is noise).
    train_examples: int | None = field(default=2048, metadata={
        "help": "training examples per trial: the first N of a seeded shuffle of the train split (None = all)"})
    eval_examples: int | None = field(default=None, metadata={
        "help": "scored examples per trial (None = the whole split, the figure users compare)"})
    epochs: float = field(default=1.0, metadata={"help": "epochs per trial"})
    max_steps: int | None = field(default=None, metadata={"help": "cap on training steps per trial (caps epochs)"})
    batch_size: int = field(default=16, metadata={"help": "training batch size"})
    # GLUE single sentences rarely exceed 64 tokens; pairs get truncated.
    max_seq_length: int = field(default=64, metadata={"help": "tokens per example; longer texts are truncated"})
    # PEFT modules want ~10x full fine-tuning's rate; 1e-2 diverged.
    learning_rate: float = field(default=5e-3, metadata={"help": "peak learning rate (linear warm-up and decay)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of steps spent warming up"})
    seed: int = field(default=0, metadata={"help": "seed of the data order, dropout and new weights"})
    # Which split scores a run (autopeft.tasks.selection): "dev", or "holdout" = rows held out of
    # the training split, so that choices made from the scores leave dev clean for the report.
    select_on: str = field(default="dev", metadata={
        "help": "split that scores trials and every choice made from them: dev, or holdout (rows held out "
                "of train; dev stays clean for `autopeft train`'s report)"})
    holdout_size: float = field(default=0.1, metadata={
        "help": "with select_on holdout: a fraction of the training split (< 1) or a row count, at most 1,000 rows"})
    # Apart from `seed`, so reseeded training holds out the same rows.
    holdout_seed: int = field(default=0, metadata={
        "help": "which training rows are held out (the same seed, the same rows)"})

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_seq_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"budget: {name} must be positive, got {getattr(self, name)}")
        for name in ("train_examples", "eval_examples", "max_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"budget: {name} must be positive or null, got {value}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("budget: epochs and learning_rate must be positive")
        from autopeft.tasks.selection import check_selection

        check_selection(self.select_on, self.holdout_size)

    def replace(self, **changes: Any) -> "TrainBudget":
        return dataclasses.replace(self, **changes)

    def total_steps(self, split_size: int) -> int:
        """Optimizer steps a run takes on a training split of ``split_size`` examples."""
        n = split_size if self.train_examples is None else min(self.train_examples, split_size)
        total = math.ceil(math.ceil(n / self.batch_size) * self.epochs)
        return total if self.max_steps is None else min(total, self.max_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainBudget":
        return dataclass_from_dict(cls, data, "budget")
