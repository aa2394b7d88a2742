"""The interactive Pareto report: one self-contained HTML file per search.

Left: metric vs trainable parameters (log), the search's third objective as colour (peak training
memory when it has none), dominated trials faded, the front joined by a step line; hovering a
point shows its configuration and every objective. Right: the hypervolume of the trials so far
(objectives scaled to [0, 1], log-scale objectives in log10), which flattens when the search stops
finding better trade-offs. The space's warm starts (hand-picked baselines) are ringed. Below: the
front as a table, best metric first (trial, every objective, the warm starts it beats, the
configuration in words) with the ``autopeft export`` command that takes each row further, then a
line per warm start. Axis titles, units and scales come from the objective registry.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

from autopeft.objectives import PEAK_MEMORY_MB, Objective, directions, get_objective
from autopeft.pareto import hypervolume_history
from autopeft.results import HandPick, hand_pick_line, hand_picks
from autopeft.schema import REPORT_HTML


def colour_objective(objectives: dict[str, Objective]) -> Objective:
    """What the points are coloured by: the first objective beyond metric and parameters, else memory."""
    extra = [o for k, o in objectives.items() if k not in ("metric", "trainable_params")]
    return extra[0] if extra else get_objective(PEAK_MEMORY_MB)


def report_data(trials: Sequence[Any], objectives: dict[str, Objective]) -> dict[str, Any]:
    """What the report draws: full-fidelity trials in trial order, the hypervolume after each, and
    the trials successive halving stopped below the top rung for good (drawn apart: their values
    are low-fidelity, so they neither join the front nor move the hypervolume). A trial paused at a
    rung and resumed by a later one (halving of the promotion type) is not drawn: the trial that
    went on with its run is. And the space's warm starts (``results.hand_picks``): the hand-picked
    baselines, with the trials that beat each."""
    scored = [t for t in trials if t.get("metric") is not None and t.get("trainable_params")]
    done = sorted((t for t in scored if t.get("status", "COMPLETE") == "COMPLETE"), key=lambda t: t["trial"])
    stopped = sorted((t for t in scored if t.get("status") == "STOPPED" and t.get("resumed_by") is None),
                     key=lambda t: t["trial"])
    points = [[o.scaled(t[k]) if t.get(k) is not None else math.nan for k, o in objectives.items()] for t in done]
    return {"trials": done, "stopped": stopped,
            "hypervolume": hypervolume_history(points, [o.direction for o in objectives.values()]),
            "hand_picks": hand_picks(trials, directions(objectives))}


def write_report(trials: Sequence[Any], objectives: dict[str, Objective], metric_name: str,
                 path: str | Path, title: str = "", search: str | None = None,
                 tracking_uri: str | None = None) -> Path:
    """The report for the trials of search ``search`` (its name goes into each row's export command)."""
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
    picks = [hp.trial for hp in data["hand_picks"] if hp.measured]
    if picks:  # ringed over their own points: the baselines the front is read against
        fig.add_trace(go.Scatter(
            x=[t["trainable_params"] for t in picks], y=[t["metric"] for t in picks], mode="markers",
            name="hand-picked (warm start)", hoverinfo="skip", customdata=[t["trial"] for t in picks],
            marker=dict(size=22, symbol="diamond-open", color="crimson", line=dict(width=2))), row=1, col=1)
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
    figure = fig.to_html(include_plotlyjs=True, full_html=False)  # plotly.js inlined: opens offline
    path.write_text(
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title or 'Pareto report')}"
        f"</title><style>{_TABLE_CSS}</style></head><body>{figure}"
        f"{front_table(done, metric_name, objectives, search, tracking_uri, data['hand_picks'])}"
        f"{hand_pick_list(data['hand_picks'], metric_name)}</body></html>\n", encoding="utf-8")
    return path


_TABLE_CSS = ("body{font-family:sans-serif;margin:16px} table.front{border-collapse:collapse;margin-top:12px}"
              "table.front th,table.front td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}"
              "table.front td.config,table.front td.next{text-align:left} table.front td.config{max-width:28em}"
              "table.front td.next{max-width:34em} table.front code{overflow-wrap:anywhere}")


def export_command(search: str | None, trial: int, tracking_uri: str | None = None) -> str:
    """The command that writes one trial's export file (what `autopeft pareto --pick` also prints)."""
    words = ["autopeft", "export", *([search] if search else []), "--pick", str(trial), "-o", "autopeft_best.json"]
    return " ".join(words + (["--tracking-uri", tracking_uri] if tracking_uri else []))


def _table_objectives(objectives: dict[str, Objective], trials: Sequence[Any]) -> list[Objective]:
    """The columns beyond metric and parameters: the search's other objectives, then memory if measured."""
    shown = [o for k, o in objectives.items() if k not in ("metric", "trainable_params")]
    if PEAK_MEMORY_MB not in objectives and any(t.get(PEAK_MEMORY_MB) is not None for t in trials):
        shown.append(get_objective(PEAK_MEMORY_MB))
    return shown


def front_table(done: Sequence[Any], metric_name: str, objectives: dict[str, Objective], search: str | None,
                tracking_uri: str | None, picks: Sequence[HandPick] = ()) -> str:
    """The Pareto-optimal trials as an HTML table, best metric first, each with its export command
    and, where the search had warm starts, the hand-picked trials it beats on every objective."""
    front = sorted((t for t in done if t.get("pareto")), key=lambda t: (-t["metric"], t["trainable_params"]))
    extra = _table_objectives(objectives, front)
    beats = {t["trial"]: [hp.trial.trial for hp in picks if any(b.trial == t["trial"] for b in hp.beaten_by)]
             for t in front}
    rows = []
    for t in front:
        pct = f" ({t['trainable_percent']:.3f}%)" if t.get("trainable_percent") is not None else ""
        cells = "".join(f"<td>{html.escape(o.format(t.get(o.key)))}</td>" for o in extra)
        words = t.get("peft_words") or t.get("peft", "")  # searches before the words tag have the compact form
        beat = f"<td>{', '.join(map(str, beats[t['trial']])) or '-'}</td>" if picks else ""
        rows.append(f"<tr><td>{t['trial']}</td><td>{t['metric']:.4f}</td><td>{t['trainable_params']:,}{pct}</td>"
                    f"{cells}{beat}<td class=\"config\">{html.escape(words)}</td>"
                    f"<td class=\"next\"><code>{html.escape(export_command(search, t['trial'], tracking_uri))}"
                    f"</code></td></tr>")
    count = f"{len(front)} trial" + ("" if len(front) == 1 else "s")
    heads = "".join(f"<th>{html.escape(o.title)}</th>" for o in extra)
    return (f"<h2>Pareto front: {count}, best {html.escape(metric_name)} first</h2>"
            f"<table class=\"front\"><thead><tr><th>trial</th><th>{html.escape(metric_name)}</th>"
            f"<th>trainable params</th>{heads}{'<th>beats hand-picks</th>' if picks else ''}<th>configuration</th>"
            f"<th>next step</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def hand_pick_list(picks: Sequence[HandPick], metric_name: str) -> str:
    """The warm starts, a line each: what each scored and which trials beat it."""
    if not picks:
        return ""
    items = "".join(f"<li>{html.escape(hand_pick_line(hp, metric_name, words=True))}</li>" for hp in picks)
    return (f"<h2>Hand-picked baselines (the space's warm starts)</h2><ul class=\"hand-picks\">{items}</ul>"
            "<p>Scored on the split the search selects on, one run each unless --top-seeds: there the best of "
            "many trials is flattered against one warm start. <code>autopeft hand-picks NAME</code> retrains both "
            "over new seeds and judges them on dev before anyone calls a win.</p>")


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
        if t.get("resume_of") is not None:
            stop += f", went on from rung {t['resume_rung']} of trial {t['resume_of']}'s run"
        lines.append(f"fidelity {t['fidelity']:.3g} of the budget, rung {int(t['rung'])}{stop}")
    config = "<br>   + ".join(str(t.get("peft", "")).split(" + "))
    return f"<b>trial {t['trial']}</b><br>" + "<br>".join(lines) + f"<br>{config}"


def log_report(record: Any, title: str) -> None:
    """Write the report of a search (``results.SearchRecord``) and attach it to its parent run."""
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(record.trials, record.objectives, record.metric_name,
                            Path(tmp) / Path(REPORT_HTML).name, title, record.name, record.tracking_uri)
        MlflowClient(record.tracking_uri).log_artifact(record.parent_run_id, str(page), str(Path(REPORT_HTML).parent))
