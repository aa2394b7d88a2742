"""The suite as a picture: per task, every baseline and every retrained found config, dev metric
(mean ± std over the seeds) against trainable parameters (log scale), from the committed run CSVs;
trains nothing.

    .venv/bin/python benchmarks/suite_plot.py            # the CPU suite -> results/suite/suite.png
    .venv/bin/python benchmarks/suite_plot.py --gpu      # the GPU pass  -> results/suite/gpu_suite.png
    .venv/bin/python benchmarks/suite_plot.py --pass small_gp_200_sh3x3_s2_cpu60_chance
        # another CPU pass, by its CSVs' label -> results/suite/suite_small_gp_200_sh3x3_s2_cpu60_chance.png
    .venv/bin/python benchmarks/suite_plot.py --gpu --pass gpu2
        # a GPU search rerun against the GPU baselines, by its gpu_suite.py --tag -> results/suite/gpu2_suite.png

The information (which points, which found configs dominate both headline baselines) is computed
by ``suite_points`` with the tables' rule (``common.dominates`` on the same reported runs);
``plot`` only draws it. The tables' verdict also asks the winner to beat the majority class,
which this picture does not check: read the verdict from the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from baselines import chosen_lrs, reported  # noqa: E402
from search_vs_baselines import HEADLINE  # noqa: E402

SOURCES = {  # which runs make a picture: baselines, retrained found configs, the picture
    "cpu": ("baselines_runs.csv", "search_vs_baselines_runs_small_gp_20.csv", "suite.png"),
    "gpu": ("gpu_baselines_runs.csv", "gpu_search_runs.csv", "gpu_suite.png"),
}


def suite_points(baselines_csv: Path, found_csv: Path, seeds: int = 3) -> dict[str, dict]:
    """task -> {"baselines": {name: summary}, "found": {name: summary}, "wins": [found names that
    dominate both headline baselines]}; a summary is ``common.summarise``'s (dev metric)."""
    base_all = common.in_sweep(common.read_csv(baselines_csv))
    base = common.summarise(reported(base_all, chosen_lrs(base_all), seeds), lambda r: (r["task"], r["name"]),
                            column="dev_metric")
    found = common.summarise([r for r in common.read_csv(found_csv) if int(r["seed"]) < seeds],
                             lambda r: (r["task"], r["name"]), column="dev_metric")
    out: dict[str, dict] = {}
    for (task, name), s in base.items():
        out.setdefault(task, {"baselines": {}, "found": {}, "wins": []})["baselines"][name] = s
    for (task, name), s in found.items():
        if task in out:
            out[task]["found"][name] = s
    for info in out.values():
        info["wins"] = [n for n, s in info["found"].items()
                        if all(h in info["baselines"] and common.dominates(s, info["baselines"][h]) for h in HEADLINE)]
    return out


def plot(points: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(points)
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        info = points[task]
        for name, s in info["baselines"].items():
            headline = name in HEADLINE
            ax.errorbar(s["params"], s["mean"], yerr=s["std"], fmt="s" if headline else "o", ms=5, capsize=2,
                        color="tab:blue" if headline else "tab:gray")
            ax.annotate(name, (s["params"], s["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, s in info["found"].items():
            ax.errorbar(s["params"], s["mean"], yerr=s["std"], fmt="*", ms=10, capsize=2,
                        color="tab:red" if name in info["wins"] else "tab:orange")
        # The view starts a little below the headline baselines, where the question is; what fell
        # far below (a collapsed prefix, a 5k-param config) is named rather than squashing the rest.
        every = {**info["baselines"], **info["found"]}
        bottom = min(info["baselines"][h]["mean"] for h in HEADLINE if h in info["baselines"]) - 0.12
        top = max(s["mean"] + s["std"] for s in every.values()) + 0.01
        ax.set_ylim(bottom, top)
        below = sorted(n for n, s in every.items() if s["mean"] < bottom)
        if below:
            ax.text(0.02, 0.02, "below: " + ", ".join(below), transform=ax.transAxes, fontsize=7)
        ax.set_xscale("log")
        ax.set_title(f"{task}: " + ("found dominates LoRA r=8 and Pfeiffer" if info["wins"] else "a miss"), fontsize=9)
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("dev metric (mean ± std)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    legend = ("baselines (blue squares: LoRA r=8, Pfeiffer; grey: the rest) and found configs "
              "(red stars: dominate both; orange: do not)")
    # under three panels the legend does not fit on the title's line
    fig.suptitle(f"{title}:{' ' if cols > 2 else chr(10)}{legend}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the GPU pass (gpu_*.csv) instead of the CPU suite")
    ap.add_argument("--pass", dest="label", default=None,
                    help="a CPU pass other than the first, by the label of its search_vs_baselines_runs_<label>.csv; "
                         "with --gpu, a search rerun by its gpu_suite.py --tag (<tag>_search_runs.csv)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    base_csv, found_csv, png = SOURCES["gpu" if args.gpu else "cpu"]
    if args.label:
        found_csv, png = ((f"{args.label}_search_runs.csv", f"{args.label}_suite.png") if args.gpu else
                          (f"search_vs_baselines_runs_{args.label}.csv", f"suite_{args.label}.png"))
        if not (common.SUITE_RESULTS / found_csv).exists():
            what = "a gpu_suite.py --tag" if args.gpu else "the label of a search_vs_baselines_runs_*.csv"
            ap.error(f"no {common.SUITE_RESULTS / found_csv}: --pass takes {what}")
    points = suite_points(common.SUITE_RESULTS / base_csv, common.SUITE_RESULTS / found_csv, args.seeds)
    if args.label:  # a pass that ran on some tasks only: its tasks
        points = {task: info for task, info in points.items() if info["found"]}
    if not points:
        sys.exit(f"no baseline runs in {common.SUITE_RESULTS / base_csv}: run the suite first")
    path = common.SUITE_RESULTS / png
    plot(points, path, f"GPU pass, 8,192 examples{', search ' + args.label if args.label else ''}" if args.gpu else
         f"CPU suite, 2,048 examples{', pass ' + args.label if args.label else ''}")
    for task, info in points.items():
        print(f"{task}: {len(info['baselines'])} baselines, {len(info['found'])} found, "
              f"dominating both headline baselines: {', '.join(info['wins']) or 'none'}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
