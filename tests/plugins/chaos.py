"""Faults injected into trials at random through the plugin hook (AUTOPEFT_PLUGINS): the soak test.

A PEFT method, ``chaos``, whose one parameter ``fault`` the search samples like any other (with
``optional: true`` in the space, about half the trials carry none). Its builder runs inside the
trial's process and injects the fault there, so that the real detection paths report it:

- ``exception``: the builder raises (``autopeft.failure=exception``);
- ``diverge``: a global forward hook turns the training loss into NaN (``diverged``);
- ``memory``: a global forward hook holds HOLD_MB of memory while training, past the search's
  ``--trial-memory-limit-mb`` (``out_of_memory``).

Each trial is a fresh Ray worker process, so a hook never outlives its trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from autopeft.errors import ConfigError
from autopeft.methods import MethodConfig, MethodSpec, register_method

FAULTS = ("exception", "diverge", "memory")
FAILURE_OF = {"exception": "exception", "diverge": "diverged", "memory": "out_of_memory"}
HOLD_MB = 400

_held: list = []


@dataclass(frozen=True)
class ChaosConfig(MethodConfig):
    method: ClassVar[str] = "chaos"
    fault: str = "exception"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fault not in FAULTS:
            raise ConfigError(f"chaos: fault must be one of {list(FAULTS)}, got {self.fault!r}")


def _nan_loss(module, args, output):
    if module.training and getattr(output, "loss", None) is not None:
        output["loss"] = output.loss * float("nan")
    return output


def _hold_memory(module, args, output):
    import torch

    if module.training and not _held and getattr(output, "loss", None) is not None:
        _held.append(torch.ones(HOLD_MB * 2**20 // 4))  # written, so resident: RSS grows by HOLD_MB
    return output


def _to_adapters(entries, num_layers, hidden):
    import torch

    fault = entries[0].fault
    if fault == "exception":
        raise RuntimeError("chaos: injected exception in the trial's builder")
    torch.nn.modules.module.register_module_forward_hook(_nan_loss if fault == "diverge" else _hold_memory)
    return []  # no modules: the other methods of the configuration are what trains


register_method(MethodSpec(name="chaos", config_cls=ChaosConfig, summary="injects a fault into its trial",
                           params=("fault",), size_param=None, per_layer=False, to_adapters=_to_adapters))
