"""What does the search's driver spend to ask one trial, and how does it grow with the study?

``--cpu-budget-s`` counts the trials' own processes; the driver's asks are not in it. A GP
sampler refits its model and optimises its acquisition on every ask, so that cost grows with the
completed trials. Side by side in one run, per search space and study size N: CPU- and wall-seconds
of one ask (Optuna's ask plus the space's define-by-run sampling, as the search's driver does it,
on a SQLite study as a search keeps it) for the GP sampler with and without ``greenlet`` (without
it Optuna optimises the acquisition from each start point in turn), TPE and random. The N
completed trials are drawn at random from the space and given synthetic objective values (metric,
log-uniform trainable params): what an ask costs depends on how many trials and parameters the
sampler fits, not on what the values are.

    python benchmarks/ask_cost.py [--spaces small,autopeft] [--sizes 10,20,40,80] [--asks 3]

Prints a table of mean +- std over the asks and the GP-with/without-greenlet ratio; writes
benchmarks/results/ask_cost.csv. Needs no data folder and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SAMPLERS = ("gp", "gp-no-greenlet", "tpe", "random")


def measure(space_name: str, size: int, sampler_name: str, asks: int, seed: int) -> list[tuple[float, float]]:
    """(CPU-s, wall-s) of each of ``asks`` asks on a study holding ``size`` completed trials."""
    import random

    import optuna

    from autopeft.models import inspect_model
    from autopeft.samplers import SAMPLERS as REGISTRY
    from autopeft.spaces import load_space
    from autopeft.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sample = load_space(space_name).define_by_run(inspect_model(common.MODEL).num_layers)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/optuna.db")
        filler = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"],
                                     sampler=optuna.samplers.RandomSampler(seed=seed))
        for _ in range(size):
            trial = filler.ask()
            sample(trial)
            filler.tell(trial, [rng.uniform(0.5, 0.9), 10 ** rng.uniform(3.5, 6.5)])
        # The search sizes its sampler's start-up phase by the trial count; past it, as here, every
        # ask is a model-based one.
        study = optuna.load_study(storage=storage, study_name="s",
                                  sampler=REGISTRY[sampler_name.removesuffix("-no-greenlet")](seed, size))
        out = []
        for _ in range(asks):
            cpu0, t0 = time.process_time(), time.perf_counter()
            trial = study.ask()
            sample(trial)
            out.append((time.process_time() - cpu0, time.perf_counter() - t0))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # keeps N completed trials for the next ask
        return out


def _child(args: argparse.Namespace) -> None:
    if args.sampler.endswith("-no-greenlet"):
        sys.modules["greenlet"] = None  # Optuna's import of it fails: its sequential fallback
    import torch

    torch.set_num_threads(1)  # as a search's driver shares the machine with its trials
    print(json.dumps(measure(args.space, args.size, args.sampler, args.asks, args.seed)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default="small,autopeft")
    ap.add_argument("--sizes", default="10,20,40,80", help="completed trials in the study when it asks")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--asks", type=int, default=3, help="asks timed per cell (mean +- std)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--space", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sampler", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    try:
        import greenlet  # noqa: F401
    except ImportError:
        sys.exit("greenlet is not installed, so GP with and without it cannot be compared: pip install greenlet")
    rows = []
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; one thread per measuring "
          f"process, {args.asks} asks per cell, mean +- std")
    print("| space | completed trials | sampler | CPU-s per ask | wall-s per ask |\n|---|---|---|---|---|")
    for space in args.spaces.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for sampler in args.samplers.split(","):
                # One process per cell: the greenlet switch is per process, and no cell warms another's caches.
                out = subprocess.run([sys.executable, __file__, "--child", "--space", space, "--size", str(size),
                                      "--sampler", sampler, "--asks", str(args.asks), "--seed", str(args.seed)],
                                     capture_output=True, text=True, check=True)
                times = json.loads(out.stdout.strip().splitlines()[-1])
                cpu, wall = [t[0] for t in times], [t[1] for t in times]
                row = {"space": space, "completed_trials": size, "sampler": sampler,
                       "cpu_mean": round(statistics.fmean(cpu), 3), "cpu_std": round(statistics.pstdev(cpu), 3),
                       "wall_mean": round(statistics.fmean(wall), 3), "wall_std": round(statistics.pstdev(wall), 3)}
                rows.append(row)
                print(f"| {space} | {size} | {sampler} | {row['cpu_mean']:.2f} +- {row['cpu_std']:.2f} | "
                      f"{row['wall_mean']:.2f} +- {row['wall_std']:.2f} |", flush=True)
    print("\nGP ask CPU-s without greenlet / with it:")
    for space in args.spaces.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            cell = {r["sampler"]: r for r in rows if (r["space"], r["completed_trials"]) == (space, size)}
            if "gp" in cell and "gp-no-greenlet" in cell and cell["gp"]["cpu_mean"] > 0:
                print(f"  {space}, {size} trials: {cell['gp-no-greenlet']['cpu_mean'] / cell['gp']['cpu_mean']:.2f}x")
    common.write_csv(common.RESULTS / "ask_cost.csv", rows)


if __name__ == "__main__":
    main()
