"""Pareto plot: metric vs trainable parameters, the third objective (else memory) as colour,
dominated trials faded."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_pareto(records: Sequence, metric_name: str, path: str | Path, objectives: Sequence[str] = (),
                title: str = "") -> Path:
    """Write a PNG of trial records (metric, trainable_params, the colour objective, pareto)."""
    import matplotlib

    from autopeft.objectives import resolve_objectives
    from autopeft.report import colour_objective

    colour = colour_objective(resolve_objectives(list(objectives) or ["metric", "trainable_params"]))

    matplotlib.use("Agg")  # headless: searches run on servers
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    # Full-fidelity trials only: a successive-halving trial stopped early has low-fidelity values.
    done = [r for r in records if r.get("metric") is not None and r.get("status", "COMPLETE") == "COMPLETE"]
    mem = [r.get(colour.key) or 0.0 for r in done]
    vmin, vmax = (min(mem), max(mem)) if mem else (0, 1)
    dominated = [r for r in done if not r["pareto"]]
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["trainable_params"])
    ax.scatter([r["trainable_params"] for r in dominated], [r["metric"] for r in dominated],
               c=[r.get(colour.key) or 0.0 for r in dominated], cmap="viridis", vmin=vmin, vmax=vmax,
               alpha=0.35, s=30, label="dominated")
    sc = ax.scatter([r["trainable_params"] for r in front], [r["metric"] for r in front],
                    c=[r.get(colour.key) or 0.0 for r in front], cmap="viridis", vmin=vmin, vmax=vmax,
                    edgecolors="black", s=70, label="Pareto-optimal")
    if front:
        ax.step([r["trainable_params"] for r in front], [r["metric"] for r in front], where="post",
                color="black", lw=1, alpha=0.6)
        for r in front:
            ax.annotate(str(r["trial"]), (r["trainable_params"], r["metric"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    if not done:  # a search stopped or failed before any trial finished still gets its plot
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(metric_name)
    ax.set_title(title or f"{metric_name} vs trainable parameters")
    ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=ax, label=colour.title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
