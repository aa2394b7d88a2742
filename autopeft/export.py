"""The exported configuration: one self-contained, versioned JSON file a user carries into training.

It holds what is needed to rebuild and retrain the chosen model without autopeft: the base model,
the task, the PEFT config (autopeft's own form), the training settings it was found with, the
objective values it reached in the search, where it came from, and the PEFT libraries' native
configs: `adapters` config dicts in Stack order plus the biases BitFit unfreezes, and, where peft can
hold the configuration, a Hugging Face peft config (else the one line saying why not). A hand-written
file needs only ``model``, ``task`` and ``peft``; everything else has defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from autopeft.config import PeftConfig, TrainBudget
from autopeft.errors import AutopeftError

EXPORT_FORMAT = "autopeft.export"
EXPORT_VERSION = 1
# Where a user without autopeft gets the embedded default from.
HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


class ExportError(AutopeftError):
    """An export file cannot be read, or holds something this autopeft does not understand."""


@dataclass(frozen=True)
class ExportedConfig:
    model: str  # as the search was given it (embedded name, folder or Hub id)
    task: str  # a shipped task name or a task YAML path
    peft: PeftConfig
    budget: TrainBudget = field(default_factory=TrainBudget)  # the settings the search trained with
    objectives: dict[str, float] = field(default_factory=dict)  # metric, trainable_params, ... reached
    metric_name: str | None = None  # the task metric that ``objectives["metric"]`` is
    source: dict[str, Any] = field(default_factory=dict)  # search name, run ids, trial, tracking URI

    def to_dict(self, native: dict[str, Any] | None = None) -> dict[str, Any]:
        import autopeft

        out: dict[str, Any] = {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "autopeft_version": autopeft.__version__,
            "model": self.model, "task": self.task, "peft": self.peft.to_dict(),
            "budget": self.budget.to_dict(), "objectives": dict(self.objectives),
            "metric_name": self.metric_name, "source": dict(self.source),
        }
        if native is not None:
            out["native"] = native
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "export") -> "ExportedConfig":
        if not isinstance(data, Mapping):
            raise ExportError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", EXPORT_FORMAT) != EXPORT_FORMAT:
            raise ExportError(f"{where}: not an autopeft export (format {data.get('format')!r})")
        if data.get("version", EXPORT_VERSION) != EXPORT_VERSION:
            raise ExportError(f"{where}: export version {data.get('version')} is not supported "
                              f"(this autopeft reads version {EXPORT_VERSION})")
        missing = [k for k in ("model", "task", "peft") if k not in data]
        if missing:
            raise ExportError(f"{where}: missing key(s) {missing}; a config needs model, task and peft")
        try:
            return cls(
                model=str(data["model"]), task=str(data["task"]), peft=PeftConfig.from_dict(data["peft"]),
                budget=TrainBudget.from_dict(data["budget"]) if data.get("budget") else TrainBudget(),
                objectives={k: float(v) for k, v in (data.get("objectives") or {}).items()},
                metric_name=data.get("metric_name"), source=dict(data.get("source") or {}))
        except AutopeftError as exc:
            raise ExportError(f"{where}: {exc}") from None


def native_config(exp: ExportedConfig, info: Any, num_labels: int) -> dict[str, Any]:
    """What the README's plain-code recipes read: the `adapters` form and, where it exists, the peft form."""
    from autopeft.build import adapters_configs
    from autopeft.methods import get_method
    from autopeft.peft_export import to_peft

    configs = adapters_configs(exp.peft, info.num_layers, info.hidden_size)
    # BitFit adds no module: it unfreezes the biases of its layers (matched by layer index).
    bitfit = sorted({i for name, entries in exp.peft.by_method().items()
                     if get_method(name).trains_base_param is not None for e in entries for i in e.layers})
    form, _ = to_peft(exp.model, exp.peft, num_labels, info=info)
    return {
        "library": "adapters",
        "base_model": HUB_IDS.get(exp.model, exp.model),
        "num_labels": num_labels,
        "adapters": {name: cfg.to_dict() for name, cfg in configs.items()},
        "active": list(configs),  # activate as adapters.Stack(*active)
        "bitfit_layers": bitfit,
        "peft": form.config,  # peft.get_peft_config(native["peft"]); None when peft cannot hold it
        "peft_unsupported": form.reason,  # why not, naming the part
    }


def save_export(exp: ExportedConfig, path: str | Path) -> Path:
    """Write ``exp`` with its native configs to ``path`` (the peft form is read off the built model)."""
    from autopeft.models import inspect_model
    from autopeft.tasks import load_task

    info = inspect_model(exp.model)
    exp.peft.check_model(info.num_layers)
    num_labels = load_task(exp.task).num_labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(exp.to_dict(native_config(exp, info, num_labels)), indent=2, sort_keys=True) + "\n")
    return path


def load_export(path: str | Path) -> ExportedConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"export file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read export file {str(path)!r}: {exc}") from None
    return ExportedConfig.from_dict(data, where=str(path))
