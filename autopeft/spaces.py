"""Search spaces: YAML in ``search_spaces/`` -> a define-by-run function over Optuna's trial API.

Schema (every key optional unless said)::

    description: text
    methods:                       # which PEFT methods may appear (at least one)
      <method>:                    # a registered method: seq_bn, par_bn, prefix, lora, ia3, bitfit, prompt
        optional: true             # sample "<method>/use" first; false -> the method is always considered
        layers: all                # where: all | mask | each | [0, 2, 5]
                                   #   all   - every layer
                                   #   mask  - each layer on/off ("<method>/layer03": true/false)
                                   #   each  - each layer samples its own size ("<method>/layer03/size"),
                                   #           0 = no module in that layer
                                   #   list  - exactly these layers
        per_target: false          # lora/ia3: each target module gets its own layers and size,
                                   #   sampled under "<method>/<target>/..."
        <param>: <domain>          # the method's parameters (size/rank/length, alpha, targets, ...)
    training:                      # optional: training settings to search too
      learning_rate: <domain>      #   sampled as "train/learning_rate"
    min_peft_params: 1             # refuse sampled configs whose PEFT modules add fewer parameters
                                   #   (the task head excluded, so one value means the same on every
                                   #   task; 1 refuses the head-only config)
    warm_start:                    # configurations evaluated first (e.g. known-good baselines):
      - {"seq_bn/layer*/size": 64} #   flat parameter values; "layer*" expands to every layer;
                                   #   parameters not given are sampled as usual

A <domain> is a constant (``24``), a list of choices (``[0, 8, 16]``), a range
(``{low: 1, high: 64, log: true}``; ints give an int range, ``step`` allowed) or
``{choices: [...]}``. For the size parameter (size, rank, length) the value 0 means "off":
nothing else of that method is sampled. ``targets`` is a list of module names (query, key,
value, intermediate, output); ``targets: {choices: [[query, value], [query, key, value]]}``
searches over such lists. Where a sample puts two LoRA-type methods (LoRA, (IA)3) on one module
in one layer, which `adapters` cannot train, the method listed first keeps it and the later one
keeps its other modules (``PeftConfig.without_module_clashes``).

Sampling only calls ``trial.suggest_*`` in a fixed order, so any Optuna sampler works and
conditional parameters are simply not sampled when their parent switches them off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from autopeft._resources import registry_entries
from autopeft.config import PeftConfig, TrainBudget
from autopeft.errors import ConfigError
from autopeft.methods import TARGET_MODULES, MethodConfig, get_method

LAYER_MODES = ("all", "mask", "each")


def training_param(name: str) -> str:
    """The study's parameter name for a searched training setting (``learning_rate`` -> ``train/learning_rate``)."""
    return f"train/{name}"


# Training settings a space may search over (fields of TrainBudget).
SEARCHABLE_TRAINING = ("learning_rate", "epochs", "batch_size", "warmup_ratio", "weight_decay")


# --------------------------------------------------------------------------- domains
@dataclass(frozen=True)
class Domain:
    """A set of values for one parameter: ``choices`` or a ``low``..``high`` range."""

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int_range(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high))

    def values_for_check(self) -> tuple[Any, ...]:
        return self.choices if self.choices is not None else (self.low, self.high)

    def suggest(self, trial: Any, key: str) -> Any:
        if self.choices is not None:
            if len(self.choices) == 1:
                return self.choices[0]
            encoded = [_encode(c) for c in self.choices]
            return _decode(trial.suggest_categorical(key, encoded))
        if self.is_int_range:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), step=self.step, log=self.log)


class SpaceError(ConfigError):
    """A problem at one dotted key of a search space (``methods.lora.rank``). Parsing raises it with
    the key alone; the loader locates it (file, and line when the space came from a file)."""

    def __init__(self, key: str, problem: str, source: str | None = None, line: int | None = None) -> None:
        self.key, self.problem = key, problem
        where = f"{source}:{line}: " if source and line else f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")

    def located(self, source: str, lines: Mapping[str, int] | None) -> "SpaceError":
        return SpaceError(self.key, self.problem, source, _line_of(self.key, lines or {}))


def _line_of(key: str, lines: Mapping[str, int]) -> int | None:
    # The deepest part of the key that the file holds (a missing key has no line of its own).
    while key and key not in lines:
        key = key.rpartition(".")[0]
    return lines.get(key) if key else None


def _encode(value: Any) -> Any:
    # Optuna categoricals hold scalars only; target lists travel as "query+value".
    return "+".join(value) if isinstance(value, (list, tuple)) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and ("+" in value or value in TARGET_MODULES):
        return tuple(value.split("+"))
    return value


def parse_domain(raw: Any, where: str) -> Domain:
    if isinstance(raw, list):
        if not raw:
            raise SpaceError(where, "the list of choices is empty; give at least one value")
        return Domain(choices=tuple(tuple(c) if isinstance(c, list) else c for c in raw))
    if isinstance(raw, Mapping):
        if "choices" in raw:
            if set(raw) != {"choices"}:
                raise SpaceError(where, f"'choices' cannot be mixed with {sorted(set(raw) - {'choices'})}")
            return parse_domain(raw["choices"], where)
        unknown = sorted(set(raw) - {"low", "high", "log", "step"})
        if unknown or "low" not in raw or "high" not in raw:
            raise SpaceError(where, f"a range needs 'low' and 'high' (optional 'log', 'step'); got keys {sorted(raw)}")
        low, high = raw["low"], raw["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise SpaceError(where, f"range needs numbers with low <= high, got low={low!r} high={high!r}")
        if raw.get("log") and low <= 0:
            raise SpaceError(where, f"a log range needs low > 0, got {low}")
        return Domain(low=low, high=high, log=bool(raw.get("log", False)), step=raw.get("step"))
    if raw is None:
        raise SpaceError(where, "no value given")
    return Domain(choices=(tuple(raw) if isinstance(raw, tuple) else raw,))


# --------------------------------------------------------------------------- method spaces
@dataclass(frozen=True)
class MethodSpace:
    method: str
    optional: bool
    layers: str | tuple[int, ...]  # a LAYER_MODES entry or fixed indices
    per_target: bool
    params: dict[str, Domain] = field(default_factory=dict)

    def check_model(self, num_layers: int, where: str) -> None:
        if isinstance(self.layers, tuple):
            bad = [i for i in self.layers if not 0 <= i < num_layers]
            if bad:
                raise SpaceError(f"{where}.layers", f"layer(s) {bad} do not exist; the model has {num_layers} "
                                                    f"layers (valid indices 0..{num_layers - 1})")

    def sample(self, trial: Any, num_layers: int) -> list[MethodConfig]:
        if self.per_target:
            targets = self.params["targets"].choices[0]
            entries: list[MethodConfig] = []
            for target in targets:
                fixed = {"targets": (target,)}
                entries += self._sample_one(trial, f"{self.method}/{target}", num_layers, fixed)
            return entries
        return self._sample_one(trial, self.method, num_layers, {})

    def _sample_one(self, trial: Any, prefix: str, num_layers: int, fixed: dict) -> list[MethodConfig]:
        spec = get_method(self.method)
        if self.optional and not trial.suggest_categorical(f"{prefix}/use", [True, False]):
            return []
        size_name = spec.size_param
        values = dict(fixed)
        for name, domain in self.params.items():
            if name != size_name and name not in fixed:
                values[name] = domain.suggest(trial, f"{prefix}/{name}")

        def make(layers: tuple[int, ...], size: Any = None) -> MethodConfig:
            kwargs = dict(values)
            if size_name is not None and size is not None:
                kwargs[size_name] = size
            if spec.per_layer:
                kwargs["layers"] = layers
            return spec.config_cls(**kwargs)

        if self.layers == "each" and spec.per_layer:
            by_size: dict[Any, list[int]] = {}
            for i in range(num_layers):
                if size_name is None:  # no size: "each" is a plain on/off mask
                    on = trial.suggest_categorical(f"{prefix}/layer{i:02d}", [True, False])
                    size = True if on else 0
                else:
                    size = self.params[size_name].suggest(trial, f"{prefix}/layer{i:02d}/{size_name}")
                if size:
                    by_size.setdefault(size, []).append(i)
            return [make(tuple(ls), None if size is True else size) for size, ls in by_size.items()]

        size = None
        if size_name is not None and size_name in self.params:
            size = self.params[size_name].suggest(trial, f"{prefix}/{size_name}")
            if size == 0:
                return []
        if not spec.per_layer:
            return [make((), size)]
        if self.layers == "all":
            layers = tuple(range(num_layers))
        elif self.layers == "mask":
            layers = tuple(i for i in range(num_layers)
                           if trial.suggest_categorical(f"{prefix}/layer{i:02d}", [True, False]))
        else:
            layers = self.layers
        return [make(layers, size)] if layers else []


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    methods: tuple[MethodSpace, ...]
    training: dict[str, Domain] = field(default_factory=dict)
    warm_start: tuple[dict[str, Any], ...] = ()
    source: str = "<memory>"
    lines: dict[str, int] = field(default_factory=dict, compare=False)  # dotted key -> line in its file
    # Sampled configs whose PEFT modules add fewer parameters (the head excluded: it depends on the
    # task, a space does not) are refused before they run: e.g. the head-only config, which a
    # size-0 everywhere point of a per-layer space can produce.
    min_peft_params: int = 0

    def check_model(self, num_layers: int) -> None:
        for m in self.methods:
            try:
                m.check_model(num_layers, f"methods.{m.method}")
            except SpaceError as exc:
                raise exc.located(self.source, self.lines) from None

    def sample(self, trial: Any, num_layers: int) -> tuple[PeftConfig, dict[str, Any]]:
        """Sample one configuration; returns it and the training settings sampled with it."""
        entries: list[MethodConfig] = []
        for m in self.methods:
            entries += m.sample(trial, num_layers)
        training = {name: d.suggest(trial, training_param(name)) for name, d in self.training.items()}
        # Independent choices can put LoRA and (IA)3 on one module, which cannot train: the method
        # listed first in the space keeps it (so (IA)3 "on key" means on key where LoRA is not).
        return PeftConfig(tuple(entries)).without_module_clashes(), training

    def define_by_run(self, num_layers: int) -> "DefineByRun":
        """The function Optuna (through Ray Tune) calls per trial; returns the built config too."""
        return DefineByRun(self, num_layers)

    def warm_start_points(self, num_layers: int) -> list[dict[str, Any]]:
        """Warm-start parameter dicts with ``layer*`` expanded to every layer."""
        points = []
        for point in self.warm_start:
            expanded: dict[str, Any] = {}
            for key, value in point.items():
                keys = [key.replace("layer*", f"layer{i:02d}") for i in range(num_layers)] if "layer*" in key else [key]
                for k in keys:
                    expanded[k] = _encode(value)
            points.append(expanded)
        return points


@dataclass(frozen=True)
class DefineByRun:
    """A picklable define-by-run function (Ray checkpoints its searcher, function and all)."""

    space: SearchSpace
    num_layers: int

    def __call__(self, trial: Any) -> dict[str, Any]:
        peft, training = self.space.sample(trial, self.num_layers)
        return {"peft_config": peft.to_dict(), "training": training}


# --------------------------------------------------------------------------- parsing
_METHOD_KEYS = ("optional", "layers", "per_target")


def _parse_method(name: str, raw: Any, where: str) -> MethodSpace:
    spec = get_method(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpaceError(where, f"expected a mapping of settings, got {raw!r}")
    allowed = set(_METHOD_KEYS) | set(spec.params)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpaceError(f"{where}.{unknown[0]}", f"unknown key(s) {unknown}; {name} takes {sorted(allowed)}")

    layers = raw.get("layers", "all")
    if isinstance(layers, list):
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise SpaceError(f"{where}.layers", f"a layer list must hold non-negative integers, got {layers}")
        layers = tuple(sorted(set(layers)))
    elif layers not in LAYER_MODES:
        raise SpaceError(f"{where}.layers",
                         f"expected one of {list(LAYER_MODES)} or a list of layer indices, got {layers!r}")
    if not spec.per_layer and layers != "all":
        raise SpaceError(f"{where}.layers", f"{name} is not placed per layer; remove 'layers'")

    params = {p: parse_domain(raw[p], f"{where}.{p}") for p in spec.params if p in raw and p != "targets"}
    if "targets" in raw:  # a plain list is one set of modules; {choices: [[...], ...]} searches sets
        t = raw["targets"]
        params["targets"] = (Domain(choices=(tuple(t),)) if isinstance(t, list) and all(isinstance(x, str) for x in t)
                             else parse_domain(t, f"{where}.targets"))
    per_target = bool(raw.get("per_target", False))
    if per_target:
        t = params.get("targets")
        if t is None or t.choices is None or len(t.choices) != 1 or not isinstance(t.choices[0], tuple):
            raise SpaceError(where, "per_target needs 'targets' as one fixed list of modules, e.g. [query, value]")
    _check_values(name, params, where)
    return MethodSpace(name, bool(raw.get("optional", False)), layers, per_target, params)


def _check_values(method: str, params: dict[str, Domain], where: str) -> None:
    """Reject values the method config would refuse, before any trial runs."""
    spec = get_method(method)
    for pname, domain in params.items():
        for value in domain.values_for_check():
            if pname == "targets":
                values = value if isinstance(value, tuple) else (value,)
                bad = [v for v in values if v not in TARGET_MODULES]
                if bad or not values:
                    raise SpaceError(f"{where}.{pname}", f"unknown target module(s) {bad}; allowed: {list(TARGET_MODULES)}")
                continue
            if isinstance(value, bool):
                continue
            field = spec.config_cls.__dataclass_fields__.get(pname)
            if isinstance(value, str) or (field and isinstance(field.default, str)):
                # a named choice (e.g. position): the config says what it takes
                try:
                    spec.config_cls(**{pname: value})
                except (ConfigError, TypeError) as exc:
                    raise SpaceError(f"{where}.{pname}", str(exc)) from None
                continue
            if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
                raise SpaceError(f"{where}.{pname}", f"expected a number, got {value!r}")
            if pname == spec.size_param:
                if value < 0 or value != int(value):
                    raise SpaceError(f"{where}.{pname}",
                                     f"{value} is out of range; sizes are whole numbers >= 0 (0 switches the method off)")
            elif value <= 0:
                raise SpaceError(f"{where}.{pname}", f"{value} is out of range; it must be positive")


def parse_space(data: Any, source: str = "<memory>", name: str | None = None,
                lines: Mapping[str, int] | None = None) -> SearchSpace:
    """Validate a space mapping; ``lines`` (dotted key -> line, from its file) lets errors name lines."""
    try:
        return _parse_space(data, source, name, lines or {})
    except SpaceError as exc:
        raise exc.located(source, lines) from None


def _parse_space(data: Any, source: str, name: str | None, lines: Mapping[str, int]) -> SearchSpace:
    if not isinstance(data, Mapping):
        raise SpaceError("", "a search space is a YAML mapping with a 'methods' key")
    if "min_trainable_params" in data:  # its name until 2026-11-27, when it counted the head too
        raise SpaceError("min_trainable_params", "min_trainable_params is now min_peft_params, which counts the "
                                                 "PEFT modules' parameters without the task head: rename it")
    unknown = sorted(set(data) - {"description", "methods", "training", "warm_start", "min_peft_params"})
    if unknown:
        raise SpaceError(unknown[0], f"unknown top-level key(s) {unknown}; allowed: description, methods, training, "
                                     f"warm_start, min_peft_params")
    min_peft = data.get("min_peft_params", 0)
    if not isinstance(min_peft, int) or isinstance(min_peft, bool) or min_peft < 0:
        raise SpaceError("min_peft_params", f"min_peft_params must be a whole number >= 0, got {min_peft!r}")
    methods_raw = data.get("methods")
    if not isinstance(methods_raw, Mapping) or not methods_raw:
        raise SpaceError("methods", "'methods' must map at least one PEFT method to its settings")
    methods = []
    for mname, raw in methods_raw.items():
        try:
            get_method(mname)
        except ConfigError as exc:
            raise SpaceError(f"methods.{mname}", str(exc)) from None
        methods.append(_parse_method(mname, raw, f"methods.{mname}"))

    training_raw = data.get("training") or {}
    if not isinstance(training_raw, Mapping):
        raise SpaceError("training", "'training' must be a mapping")
    bad = sorted(set(training_raw) - set(SEARCHABLE_TRAINING))
    if bad:
        raise SpaceError(f"training.{bad[0]}", f"unknown key(s) {bad}; searchable: {list(SEARCHABLE_TRAINING)}")
    training = {k: parse_domain(v, f"training.{k}") for k, v in training_raw.items()}
    for k, d in training.items():  # TrainBudget validates each value
        for v in d.values_for_check():
            try:
                TrainBudget().replace(**{k: v})
            except ConfigError as exc:
                raise SpaceError(f"training.{k}", str(exc)) from None

    warm = data.get("warm_start") or []
    if not isinstance(warm, list) or not all(isinstance(p, Mapping) for p in warm):
        raise SpaceError("warm_start", "warm_start must be a list of mappings of parameter values")
    return SearchSpace(
        name=name or Path(source).stem,
        description=str(data.get("description", "")).strip(),
        methods=tuple(methods),
        training=training,
        warm_start=tuple(dict(p) for p in warm),
        source=source,
        lines=dict(lines),
        min_peft_params=min_peft,
    )


def available_spaces() -> dict[str, Path]:
    return registry_entries("search_spaces")


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name (``autopeft``, ``lora``, ``hybrid``) or a YAML file path."""
    shipped = available_spaces()
    path = shipped.get(name_or_path)
    if path is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"unknown search space {name_or_path!r}: not a shipped space ({sorted(shipped)}) "
                f"and no such file"
            )
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{at} malformed YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_space(data, str(path), name=path.stem, lines=_key_lines(text))


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key path -> 1-based line, from the YAML node tree."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                lines[path] = key.start_mark.line + 1
                walk(value, path)

    walk(yaml.compose(text), "")
    return lines
