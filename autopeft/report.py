"""The interactive Pareto report: one self-contained HTML file per search.

Left: metric vs trainable parameters (log), the search's third objective as colour (peak training
memory when it has none), dominated trials faded, the front joined by a step line; hovering a
point shows its configuration and every objective. Right: the hypervolume of the trials so far
(objectives scaled to [0, 1], log-scale objectives in log10), which flattens when the search stops
finding better trade-offs. Axis titles, units and scales come from the objective registry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from autopeft.objectives import PEAK_MEMORY_MB, Objective, get_objective
from autopeft.pareto import hypervolume_history
from autopeft.schema import REPORT_HTML


def colour_objective(objectives: dict[str, Objective]) -> Objective:
    """What the points are coloured by: the first objective beyond metric and parameters, else memory."""
    extra = [o for k, o in objectives.items() if k not in ("metric", "trainable_params")]
    return extra[0] if extra else get_objective(PEAK_MEMORY_MB)


def report_data(trials: Sequence[Any], objectives: dict[str, Objective]) -> dict[str, Any]:
    """What the report draws: full-fidelity trials in trial order, the hypervolume after each, and
    the trials successive halving stopped below the top rung (drawn apart: their values are
    low-fidelity, so they neither join the front nor move the hypervolume)."""
    scored = [t for t in trials if t.get("metric") is not None and t.get("trainable_params")]
    done = sorted((t for t in scored if t.get("status", "COMPLETE") == "COMPLETE"), key=lambda t: t["trial"])
    stopped = sorted((t for t in scored if t.get("status") == "STOPPED"), key=lambda t: t["trial"])
    points = [[o.scaled(t[k]) if t.get(k) is not None else math.nan for k, o in objectives.items()] for t in done]
    return {"trials": done, "stopped": stopped,
            "hypervolume": hypervolume_history(points, [o.direction for o in objectives.values()])}


def write_report(trials: Sequence[Any], objectives: dict[str, Objective], metric_name: str,
                 path: str | Path, title: str = "") -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = report_data(trials, objectives)
    done = data["trials"]
    colour = colour_objective(objectives)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.08,
                        subplot_titles=(f"{metric_name} vs trainable parameters (colour: {colour.title})",
                                        "hypervolume over trials"))
    values = [t.get(colour.key) or 0.0 for t in done]
    cmin, cmax = (min(values), max(values)) if values else (0.0, 1.0)
    for on_front, name in ((False, "dominated"), (True, "Pareto-optimal")):
        group = [t for t in done if bool(t.get("pareto")) == on_front]
        fig.add_trace(go.Scatter(
            x=[t["trainable_params"] for t in group], y=[t["metric"] for t in group], mode="markers", name=name,
            opacity=1.0 if on_front else 0.3, text=[_hover(t, metric_name, objectives) for t in group],
            hoverinfo="text", customdata=[t["trial"] for t in group],
            marker=dict(size=13 if on_front else 9, color=[t.get(colour.key) or 0.0 for t in group],
                        colorscale="Viridis", cmin=cmin, cmax=cmax, showscale=on_front,
                        colorbar=dict(title=colour.unit or colour.label, x=1.02) if on_front else None,
                        line=dict(width=1.5 if on_front else 0, color="black"))), row=1, col=1)
    if data["stopped"]:
        fig.add_trace(go.Scatter(
            x=[t["trainable_params"] for t in data["stopped"]], y=[t["metric"] for t in data["stopped"]],
            mode="markers", name="stopped early (low fidelity)", opacity=0.35,
            text=[_hover(t, metric_name, objectives) for t in data["stopped"]], hoverinfo="text",
            customdata=[t["trial"] for t in data["stopped"]], marker=dict(size=8, symbol="x", color="grey")),
            row=1, col=1)
    front = sorted((t for t in done if t.get("pareto")), key=lambda t: t["trainable_params"])
    if front:
        fig.add_trace(go.Scatter(x=[t["trainable_params"] for t in front], y=[t["metric"] for t in front],
                                 mode="lines", line=dict(shape="hv", color="black", width=1), hoverinfo="skip",
                                 name="front", showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(x=[t["trial"] for t in done], y=data["hypervolume"], mode="lines+markers",
                             name="hypervolume", hovertemplate="trial %{x}: %{y:.4f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(type="log", title_text="trainable parameters (log)", row=1, col=1)
    fig.update_yaxes(title_text=metric_name, row=1, col=1)
    fig.update_xaxes(title_text="trial", tickformat="d", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (scaled objectives)", row=1, col=2)
    fig.update_layout(title=title or "Pareto report", template="plotly_white", height=560, width=1250,
                      legend=dict(orientation="h", y=-0.15))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)  # self-contained: opens offline
    return path


def _hover(t: Any, metric_name: str, objectives: dict[str, Objective]) -> str:
    pct = f" ({t['trainable_percent']:.3f}%)" if t.get("trainable_percent") is not None else ""
    lines = [f"{metric_name} {t['metric']:.4f}", f"{t['trainable_params']:,} trainable params{pct}"]
    shown = {"metric", "trainable_params"}
    extra = [o for k, o in objectives.items() if k not in shown]
    if PEAK_MEMORY_MB not in objectives:
        extra.append(get_objective(PEAK_MEMORY_MB))
    lines += [f"{o.label} {o.format(t.get(o.key))} {o.unit}".rstrip() for o in extra if t.get(o.key) is not None]
    if t.get("fidelity") is not None:  # successive halving: how much of the budget it had
        stop = " (stopped there)" if t.get("status") == "STOPPED" else ""
        lines.append(f"fidelity {t['fidelity']:.3g} of the budget, rung {int(t['rung'])}{stop}")
    config = "<br>   + ".join(str(t.get("peft", "")).split(" + "))
    return f"<b>trial {t['trial']}</b><br>" + "<br>".join(lines) + f"<br>{config}"


def log_report(record: Any, title: str) -> None:
    """Write the report of a search (``results.SearchRecord``) and attach it to its parent run."""
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        html = write_report(record.trials, record.objectives, record.metric_name,
                            Path(tmp) / Path(REPORT_HTML).name, title)
        MlflowClient(record.tracking_uri).log_artifact(record.parent_run_id, str(html), str(Path(REPORT_HTML).parent))
