"""Print the results CSVs of the quality benchmarks as the markdown tables of benchmarks/README.md.

    .venv/bin/python benchmarks/markdown_tables.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

METRIC_NAMES = {"sst2": "SST-2 acc", "rte": "RTE acc", "mrpc": "MRPC F1", "cola": "CoLA MCC", "stsb": "STS-B Pearson",
                "mr": "MR acc", "mpqa": "MPQA acc", "trec": "TREC acc", "sick_r": "SICK-R Pearson",
                "sick_e": "SICK-E acc"}


def baseline_table(path: Path, cell_text) -> None:
    """Baselines x tasks, each cell as ``cell_text(row)`` says."""
    rows = common.read_csv(path)
    if not rows:
        return
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    names = list(dict.fromkeys(r["baseline"] for r in rows))
    cell = {(r["task"], r["baseline"]): r for r in rows}
    print("| baseline | trainable params | " + " | ".join(METRIC_NAMES[t] for t in tasks) + " |")
    print("|---|---:|" + "---:|" * len(tasks))
    for n in names:
        params = next(cell[(t, n)]["trainable_params"] for t in tasks if (t, n) in cell)
        print(f"| {n} | {int(params):,} | " + " | ".join(
            cell_text(cell[(t, n)]) if (t, n) in cell else "" for t in tasks) + " |")
    print()


def baselines() -> None:
    # The GLUE round: dev-selected, one learning rate.
    baseline_table(common.RESULTS / "baselines_table.csv",
                   lambda r: f"{float(r['metric_mean']):.3f} ± {float(r['metric_std']):.3f}")
    # The suite: dev metric at the rate chosen on the holdout, mean ± std over seeds.
    baseline_table(common.SUITE_RESULTS / "baselines_table.csv",
                   lambda r: f"{float(r['dev_mean']):.3f} ± {float(r['dev_std']):.3f} (lr {float(r['learning_rate']):g})")


def search_vs_baselines() -> None:
    for path in sorted([*common.RESULTS.glob("search_vs_baselines_*_*_*.csv"),
                        *common.SUITE_RESULTS.glob("search_vs_baselines_*_*_*.csv")]):
        if not path.stem.startswith("search_vs_baselines_runs_"):
            print(f"{path.name}:\n")
            search_vs_baselines_table(common.read_csv(path))


def search_vs_baselines_table(rows: list[dict]) -> None:
    print("| task | baseline | baseline metric | params | dominated? | by (metric, params) | found config |")
    print("|---|---|---:|---:|---|---|---|")
    for r in rows:
        by = (f"{float(r['by_metric']):.3f} ± {float(r['by_std']):.3f}, {int(r['by_params']):,}"
              if r["dominated"] == "True" else "")
        print(f"| {r['task']} | {r['baseline']} | {float(r['baseline_metric']):.3f} ± {float(r['baseline_std']):.3f} "
              f"| {int(r['baseline_params']):,} | {'yes' if r['dominated'] == 'True' else 'no'} | {by} | "
              f"{r['by_config']} |")
    print()
    print("| task | majority-class score | hypervolume found / baselines | CPU-s search + retrain | CPU-s baselines |")
    print("|---|---:|---:|---:|---:|")
    seen = set()
    for r in rows:
        if r["task"] in seen:
            continue
        seen.add(r["task"])
        ratio = f" (ratio {float(r['cpu_ratio']):.2f})" if r.get("cpu_ratio") else ""  # the suite's tables have it
        print(f"| {r['task']} | {float(r['majority_metric']):.3f} | {float(r['hv_found_over_baselines']):.3f} | {r['search_cpu_seconds']} + "
              f"{r['retrain_cpu_seconds']} | {r['baselines_cpu_seconds']}{ratio} |")
    print()


def samplers() -> None:
    rows = common.read_csv(common.RESULTS / "samplers.csv")
    if not rows:
        return
    print("| sampler | trials to 90% of best HV (seeds 0, 1, 2) | median | final HV / best (mean ± std) | "
          "best metric (mean of seeds) |")
    print("|---|---|---:|---|---:|")
    for r in sorted(rows, key=lambda r: (float(r["median_trials_to_90pct"]), -float(r["final_hv_over_best_mean"]))):
        print(f"| {r['sampler']} | {r['trials_to_90pct']} | {r['median_trials_to_90pct']} | "
              f"{float(r['final_hv_over_best_mean']):.3f} ± {float(r['final_hv_over_best_std']):.3f} | "
              f"{float(r['best_metric_mean']):.4f} |")
    print()


def transfer() -> None:
    rows = common.read_csv(common.SUITE_RESULTS / "transfer.csv")
    if not rows:
        return
    print(f"transfer.csv: the {rows[0]['source']} config {rows[0]['config']} (lr {float(rows[0]['lr']):g}), "
          "retrained unchanged\n")
    print("| task | transferred config (dev) | params | baseline | baseline (dev) | params | dominated? |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['task']} | {float(r['metric']):.3f} ± {float(r['std']):.3f} | {int(r['params']):,} | "
              f"{r['baseline']} | {float(r['baseline_metric']):.3f} ± {float(r['baseline_std']):.3f} | "
              f"{int(r['baseline_params']):,} | {'yes' if r['dominated'] == 'True' else 'no'} |")
    print()


if __name__ == "__main__":
    baselines()
    samplers()
    search_vs_baselines()
    transfer()
