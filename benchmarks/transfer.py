"""Does a configuration found on one task carry over to related tasks unchanged?

The source task's search (search_vs_baselines.py) retrained its front configurations at the suite
budget for every seed. Of those within LoRA r=8's trainable-parameter count on the source task,
the one with the best mean *holdout* metric is chosen (dev is not looked at), and retrained
unchanged (same methods, placement, sizes and learning rate) on each target task for every seed,
at the same budget as the baselines there (benchmarks/baselines.py). The table says which target
baselines it dominates (``_common.dominates``: dev mean >= and params <=, strictly better in one,
a better metric by more than the larger of the two seed stds).

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/transfer.py [--source sst2 --targets mr,mpqa]

Needs the source task's search_vs_baselines runs and the targets' baseline runs (same budget
arguments); a target whose baselines are missing is skipped with a message. Runs are appended to
benchmarks/results/suite/transfer_runs.csv (a stopped run resumes), the table to transfer.csv.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from baselines import EXTRA, add_budget_args, chosen_lrs, reported, suite_budget  # noqa: E402

KEY = ("source", "task", "name", "seed")


def pick_source_config(rows: list[dict[str, str]], source: str, max_params: float, seeds: int) -> dict | None:
    """The source's retrained front config with the best mean holdout metric within ``max_params``."""
    found = common.summarise([r for r in rows if r["task"] == source and int(r["seed"]) < seeds],
                             lambda r: (r["name"],))
    fits = [(s["mean"], -s["params"], name) for (name,), s in found.items()
            if s["params"] <= max_params and not math.isnan(s["mean"])]
    if not fits:
        return None
    name = max(fits)[2]
    row = next(r for r in rows if r["task"] == source and r["name"] == name)
    return {"name": name, "peft_json": row["peft"], "lr": float(row["lr"]), "holdout": found[(name,)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(ap)
    ap.add_argument("--source", default="sst2")
    ap.add_argument("--targets", default="mr,mpqa")
    ap.add_argument("--found", type=Path, default=None,
                    help="the source's retraining runs (default: the newest search_vs_baselines_runs_*.csv holding it)")
    ap.add_argument("--baselines", type=Path, default=common.SUITE_RESULTS / "baselines_runs.csv")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or AUTOPEFT_DATA_DIR (the data folder, e.g. ../shared/data)")
    args.data_dir = str(Path(args.data_dir).resolve())
    # The newest search that has the source task: a later pass over other tasks alone leaves it be.
    with_source = [p for p in common.SUITE_RESULTS.glob("search_vs_baselines_runs_*.csv")
                   if any(r["task"] == args.source for r in common.read_csv(p))]
    found_csv = args.found or max(with_source, key=common.written_at, default=None)
    found_rows = common.read_csv(found_csv) if found_csv else []
    base_all = common.in_sweep(common.read_csv(args.baselines))
    lrs = chosen_lrs(base_all)
    base_rows = reported(base_all, lrs, args.seeds)
    lora = [float(r["trainable_params"]) for r in base_rows if r["task"] == args.source and r["name"] == "lora_r8"]
    if not lora or not any(r["task"] == args.source for r in found_rows):
        print(f"transfer: no search or baselines for {args.source} yet (run run_suite.sh for it first); skipped")
        return
    pick = pick_source_config(found_rows, args.source, lora[0], args.seeds)
    if pick is None:
        print(f"transfer: no config retrained on {args.source} within LoRA r=8's {lora[0]:.0f} params; skipped")
        return
    targets = [t for t in args.targets.split(",") if any(r["task"] == t for r in base_rows)]
    for t in sorted(set(args.targets.split(",")) - set(targets)):
        print(f"transfer: no baselines for {t} yet; skipped")
    jobs = [{"source": args.source, "task": t, "name": pick["name"], "seed": seed, "peft_json": pick["peft_json"],
             "budget_json": json.dumps(suite_budget(args, seed, pick["lr"]).to_dict())}
            for t in targets for seed in range(args.seeds)]
    runs_csv = common.SUITE_RESULTS / "transfer_runs.csv"
    rows = common.run_jobs(jobs, runs_csv, args.data_dir, args.workers, key=KEY, extra=EXTRA)
    mine = common.summarise([r for r in rows if r["source"] == args.source and r["name"] == pick["name"]
                             and int(r["seed"]) < args.seeds], lambda r: (r["task"],), column="dev_metric")
    base = common.summarise(base_rows, lambda r: (r["task"], r["name"]), column="dev_metric")
    from autopeft.config import PeftConfig

    label = PeftConfig.from_json(pick["peft_json"]).describe()
    h = pick["holdout"]
    print(f"\n{args.source} config {pick['name']} ({label}, lr {pick['lr']:g}, {h['params']:.0f} params; "
          f"{args.source} holdout {h['mean']:.4f} +- {h['std']:.4f}), retrained unchanged:")
    table = []
    for t in targets:
        m = mine.get((t,))
        if m is None:
            continue
        print(f"  {t}: {m['mean']:.4f} +- {m['std']:.4f} on dev, {m['params']:.0f} params")
        for (bt, bname), b in sorted(base.items(), key=lambda kv: kv[1]["params"]):
            if bt != t:
                continue
            dom = common.dominates(m, b)
            print(f"    {bname:9s} {b['mean']:.4f} +- {b['std']:.4f} {b['params']:>10.0f}  "
                  f"{'dominated' if dom else 'not dominated'}")
            table.append({"source": args.source, "task": t, "config": label, "lr": pick["lr"],
                          "metric": round(m["mean"], 4), "std": round(m["std"], 4), "params": int(m["params"]),
                          "baseline": bname, "baseline_metric": round(b["mean"], 4),
                          "baseline_std": round(b["std"], 4), "baseline_params": int(b["params"]), "dominated": dom})
    if table:
        common.write_task_table(common.SUITE_RESULTS / "transfer.csv", table, targets)


if __name__ == "__main__":
    main()
