"""Stopped runs' training states on disk, for successive halving of the promotion type
(``--scheduler shp``): a trial stops at each rung below the top and keeps its ``train.TrainState``
here; the searcher claims the state of the run it promotes, and the trial that resumes it loads it.

One file per configuration's run, named by the Optuna number of its first trial: ``<root>.pt``
while it waits to be promoted, ``<root>.claimed.pt`` once a driver has promoted it. Claiming is an
atomic rename, so two drivers of one study never resume the same run. A claimed state stays until
the resumed trial has kept its next state or finished: a resumed trial that is lost and asked
again loads it again. The folder must be one every trial's node can reach (``--workdir`` on a
shared filesystem in cluster mode); a state a driver cannot see is never promoted, nothing more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_CLAIMED = ".claimed"


class RunStates:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def save(self, root: int | str, state: Any) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{root}.pt.tmp-{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.folder / f"{root}.pt")  # a reader never sees half a file

    def waiting(self) -> set[str]:
        """Runs whose state is kept and not claimed: those a promotion may resume."""
        if not self.folder.is_dir():
            return set()
        return {p.stem for p in self.folder.glob("*.pt") if "." not in p.stem}

    def claimed(self) -> set[str]:
        """Runs claimed for a resume that has not kept its next state yet (cut off by a kill)."""
        if not self.folder.is_dir():
            return set()
        return {p.name[:-len(_CLAIMED + ".pt")] for p in self.folder.glob(f"*{_CLAIMED}.pt")}

    def claim(self, root: int | str) -> bool:
        """Take run ``root``'s state for a promotion; False if another driver took it first."""
        try:
            os.replace(self.folder / f"{root}.pt", self._claimed(root))
        except FileNotFoundError:
            return False
        return True

    def load_claimed(self, root: int | str) -> Any:
        import torch

        # Our own file, written by torch.save of a TrainState (tensors, lists, optimizer dicts).
        return torch.load(self._claimed(root), weights_only=False)

    def release(self, root: int | str) -> None:
        """The resumed trial has kept its next state (or ended at the top): the claimed one is spent."""
        self._claimed(root).unlink(missing_ok=True)

    def _claimed(self, root: int | str) -> Path:
        return self.folder / f"{root}{_CLAIMED}.pt"
