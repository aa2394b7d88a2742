"""The ``autopeft`` command line. Each command is a small function; errors a user can fix are
printed as one message (no traceback) with exit code 2."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autopeft.errors import AutopeftError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Search for the best parameter-efficient fine-tuning configuration of a transformer.")
console = Console(stderr=True)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AutopeftError as exc:
            console.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False)
            raise typer.Exit(2)
    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)


@app.callback()
def main() -> None:
    """autopeft: multi-objective PEFT configuration search (Ray Tune + Optuna + MLflow)."""


# Defaults and help texts come from what they describe (settings dataclasses, the registries), so
# the CLI never restates them.
from autopeft.config import TrainBudget  # noqa: E402
from autopeft.objectives import available_objectives  # noqa: E402
from autopeft.samplers import describe_samplers  # noqa: E402
from autopeft.search import BUDGETED_NUM_SAMPLES, HALVING, SCHEDULER_KINDS, SearchSettings  # noqa: E402

_S, _B = SearchSettings, TrainBudget


def _default(cls: type, name: str):
    return cls.__dataclass_fields__[name].default


def _help(cls: type, name: str) -> str:
    text = cls.__dataclass_fields__[name].metadata.get("help", "")
    return text[:1].upper() + text[1:] + "." if text else ""


def _shipped(kind: str) -> str:
    from autopeft._resources import registry_entries

    return ", ".join(registry_entries(kind))


@app.command()
@friendly_errors
def search(
    name: Optional[str] = typer.Option(None, help=_help(_S, "name") + " Generated when omitted."),
    model: str = typer.Option(_default(_S, "model"), help=_help(_S, "model")),
    task: str = typer.Option(_default(_S, "task"), help=f"A shipped task ({_shipped('tasks')}) or a task YAML path."),
    space: str = typer.Option(_default(_S, "space"),
                              help=f"A shipped search space ({_shipped('search_spaces')}) or a YAML path."),
    num_samples: Optional[int] = typer.Option(None, help=_help(_S, "num_samples")),
    full_trials: Optional[float] = typer.Option(None, help=_help(_S, "full_trials")),
    cpu_budget_s: Optional[float] = typer.Option(None, help=_help(_S, "cpu_budget_s")),
    max_concurrent_trials: int = typer.Option(_default(_S, "max_concurrent_trials"), help=_help(_S, "max_concurrent_trials")),
    cpus_per_trial: float = typer.Option(_default(_S, "cpus_per_trial"), help=_help(_S, "cpus_per_trial")),
    gpus_per_trial: float = typer.Option(_default(_S, "gpus_per_trial"), help=_help(_S, "gpus_per_trial")),
    sampler: str = typer.Option(_default(_S, "sampler"), help=f"Optuna sampler: {describe_samplers()}."),
    objectives: str = typer.Option(
        ",".join(_default(_S, "objectives")),
        help="Objectives to optimise, comma-separated, the task metric first; known: "
             + ", ".join(f"{k} ({o.direction})" for k, o in available_objectives().items()) + "."),
    memory_objective: bool = typer.Option(False, "--memory-objective/--no-memory-objective",
                                          help="Also minimise peak training memory (adds peak_memory_mb to --objectives)."),
    seed: int = typer.Option(_default(_S, "seed"), help=_help(_S, "seed")),
    train_examples: Optional[int] = typer.Option(_default(_B, "train_examples"), help=_help(_B, "train_examples").replace("None", "0")),
    eval_examples: Optional[int] = typer.Option(0, help=_help(_B, "eval_examples").replace("None", "0")),
    epochs: float = typer.Option(_default(_B, "epochs"), help=_help(_B, "epochs")),
    max_steps: Optional[int] = typer.Option(_default(_B, "max_steps"), help=_help(_B, "max_steps")),
    batch_size: int = typer.Option(_default(_B, "batch_size"), help=_help(_B, "batch_size")),
    max_seq_length: int = typer.Option(_default(_B, "max_seq_length"), help=_help(_B, "max_seq_length")),
    learning_rate: float = typer.Option(_default(_B, "learning_rate"), help=_help(_B, "learning_rate")),
    select_on: str = typer.Option(_default(_B, "select_on"), help=_help(_B, "select_on")),
    holdout_size: float = typer.Option(_default(_B, "holdout_size"), help=_help(_B, "holdout_size")),
    holdout_seed: int = typer.Option(_default(_B, "holdout_seed"), help=_help(_B, "holdout_seed")),
    data_dir: Optional[str] = typer.Option(None, help="Folder laid out like GLUE's (env AUTOPEFT_DATA_DIR). Unset: the Hugging Face Hub."),
    workdir: str = typer.Option(_default(_S, "workdir"), help=_help(_S, "workdir")),
    storage: Optional[str] = typer.Option(None, help=_help(_S, "storage")),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    experiment: str = typer.Option(_default(_S, "experiment"), help=_help(_S, "experiment")),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Join an existing Ray cluster (default: start a local one)."),
    trial_memory_limit_mb: Optional[float] = typer.Option(None, help=_help(_S, "trial_memory_limit_mb")),
    retry_lost_trials: int = typer.Option(_default(_S, "retry_lost_trials"), help=_help(_S, "retry_lost_trials")),
    scheduler: str = typer.Option(_default(_S, "scheduler"), help=_help(_S, "scheduler")),
    rungs: int = typer.Option(_default(_S, "rungs"), help=_help(_S, "rungs")),
    reduction_factor: int = typer.Option(_default(_S, "reduction_factor"), help=_help(_S, "reduction_factor")),
    rung_confidence: float = typer.Option(_default(_S, "rung_confidence"), help=_help(_S, "rung_confidence")),
    rank_check: bool = typer.Option(_default(_S, "rank_check"), "--rank-check/--no-rank-check", help=_help(_S, "rank_check")),
    halve_warm_starts: bool = typer.Option(_default(_S, "halve_warm_starts"), "--halve-warm-starts/--no-halve-warm-starts",
                                           help=_help(_S, "halve_warm_starts")),
    top_seeds: int = typer.Option(_default(_S, "top_seeds"), help=_help(_S, "top_seeds")),
    reuse_workers: Optional[bool] = typer.Option(None, "--reuse-workers/--fresh-workers", help=_help(_S, "reuse_workers")),
    max_params: Optional[int] = typer.Option(None, help="Constraint the sampler is told: at most this many trainable parameters."),
    max_memory: Optional[float] = typer.Option(None, help="Constraint the sampler is told: at most this peak training memory (MB)."),
    max_latency: Optional[float] = typer.Option(None, help="Constraint the sampler is told: at most this latency (ms/example)."),
    resume: Optional[str] = typer.Option(None, help="Continue the search of this name with the settings it was started with (from --storage / --workdir); "
                                                    "--num-samples / --cpu-budget-s / --full-trials given with it move its target."),
) -> None:
    """Run a multi-objective search and print its Pareto front.

    Running the same --name again continues that search; so does --resume NAME.
    """
    from autopeft.search import default_name
    from autopeft.stores import check_database_url
    from autopeft.study import stored_settings

    if resume:
        url = storage or SearchSettings(name=resume, workdir=workdir).storage_url()
        check_database_url(url, "--storage")
        settings = extend_target(SearchSettings.from_dict(stored_settings(resume, url)), num_samples, cpu_budget_s,
                                 full_trials)
        if ray_address:
            settings = settings.replace(ray_address=ray_address)
        _run_and_report(settings)
        return

    keys = tuple(k.strip() for k in objectives.split(",") if k.strip())
    if memory_objective and "peak_memory_mb" not in keys:
        keys += ("peak_memory_mb",)
    budget = TrainBudget(train_examples=train_examples or None, eval_examples=eval_examples or None, epochs=epochs,
                         max_steps=max_steps, batch_size=batch_size, max_seq_length=max_seq_length,
                         learning_rate=learning_rate, seed=seed, select_on=select_on, holdout_size=holdout_size,
                         holdout_seed=holdout_seed)
    settings = SearchSettings(
        name=name or default_name(task, space), model=model, task=task, space=space, budget=budget,
        num_samples=num_samples, full_trials=full_trials,
        cpu_budget_s=cpu_budget_s, max_concurrent_trials=max_concurrent_trials, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, sampler=sampler, objectives=keys, seed=seed,
        data_dir=data_dir, workdir=str(Path(workdir).resolve()), storage=storage, tracking_uri=tracking_uri,
        experiment=experiment, ray_address=ray_address, trial_memory_limit_mb=trial_memory_limit_mb,
        retry_lost_trials=retry_lost_trials, scheduler=scheduler, rungs=rungs, reduction_factor=reduction_factor,
        rung_confidence=rung_confidence, rank_check=rank_check, halve_warm_starts=halve_warm_starts,
        reuse_workers=reuse_workers, top_seeds=top_seeds,
        limits={k: v for k, v in (("max_params", max_params), ("max_memory", max_memory),
                                  ("max_latency", max_latency)) if v is not None})
    _run_and_report(settings)


def extend_target(settings: SearchSettings, num_samples: Optional[int], cpu_budget_s: Optional[float],
                  full_trials: Optional[float] = None) -> SearchSettings:
    """``--resume NAME`` keeps the settings a search started with, except its target: a count, a
    CPU budget or a size in full trials given beside it replaces the stored one (more trials for a
    search that ended, a budget for one that had none), and the study records it for later resumes
    (search.open_stores). A count or a CPU budget given ends a stored --full-trials: it would
    otherwise stop the search first."""
    if num_samples is None and cpu_budget_s is None and full_trials is None:
        return settings
    if full_trials is not None and num_samples is None and cpu_budget_s is None:
        return settings.replace(num_samples=None, full_trials=full_trials)  # its trial cap as for a new search
    if num_samples is None and settings.cpu_budget_s is None:  # a budget where there was a count: as for a new search
        num_samples = max(BUDGETED_NUM_SAMPLES, settings.num_samples)
    return settings.replace(num_samples=settings.num_samples if num_samples is None else num_samples,
                            cpu_budget_s=settings.cpu_budget_s if cpu_budget_s is None else cpu_budget_s,
                            full_trials=full_trials)


def _run_and_report(settings) -> None:
    from autopeft.schema import cpu_seconds_spent
    from autopeft.search import prepare, rung_notes, run_search

    prepared = prepare(settings)  # every input checked before Ray starts
    for note in prepared.notes:
        console.print(f"[yellow]note:[/] {_escape(note)}", highlight=False)
    if settings.cpu_budget_s is not None:
        trials = f"trials within {settings.cpu_budget_s:g} CPU-s" + (
            f" (at most {settings.num_samples})" if settings.num_samples < BUDGETED_NUM_SAMPLES else "")
    elif settings.full_trials is not None:
        trials = f"trials worth {settings.full_trials:g} full-budget trials"
    else:
        trials = f"{settings.num_samples} trials"
    console.print(f"search [bold]{settings.name}[/]: {trials} of {settings.model} on "
                  f"{settings.task}, space {settings.space}, sampler {settings.sampler}"
                  + (f", successive halving{SCHEDULER_KINDS.get(settings.scheduler, '')} "
                     f"({settings.rungs} rungs, eta {settings.reduction_factor})" if settings.scheduler in HALVING else "")
                  + f", scored on {_selection_text(settings.budget)}")
    try:
        result = run_search(settings, prepared=prepared)
    except KeyboardInterrupt:
        console.print(f"stopped. Finished trials are saved; continue with: autopeft search --resume {settings.name}"
                      + ("" if settings.storage else f" --workdir {settings.workdir}"), soft_wrap=True)
        raise typer.Exit(130)
    if result.front:
        print_front(result.front, result.metric_name, result.objectives, title=f"Pareto front of {result.name}")
        print_hand_picks(result.trials, result.objectives, result.metric_name, result.name)
    else:
        console.print("no trial completed, so there is no Pareto front")
    failed = [r for r in result.trials if r.status == "FAILED"]
    done = sum(r.status == "COMPLETE" for r in result.trials)
    stopped = sum(r.stopped_early for r in result.trials)
    paused = sum(r.paused for r in result.trials)
    console.print(f"{done} trials completed" + (f", {stopped} stopped early by successive halving" if stopped else "")
                  + (f", {paused} paused at a rung and resumed by a later trial" if paused else "")
                  + f", {len(failed)} failed, {cpu_seconds_spent(result.trials):,.0f} CPU-s of trials. MLflow: "
                  f"{result.tracking_uri} (parent run {result.parent_run_id})")
    for r in failed:
        console.print(f"  trial {r['trial']} failed ({r['failure']}): {_escape(str(r['error']))[:300]}")
    for line in rung_notes(settings):
        console.print(f"[yellow]note:[/] {_escape(line)}", highlight=False)


def _selection_text(budget) -> str:
    if budget.select_on == "dev":
        return "the dev split"
    size = f"{budget.holdout_size:g} of train" if budget.holdout_size < 1 else f"{int(budget.holdout_size)} rows"
    return f"a holdout ({size}, seed {budget.holdout_seed}; dev is left for the report)"


def print_front(front: list, metric_name: str, objectives: dict, title: str, picked: int | None = None) -> None:
    """The front as a table: every objective the search optimised, then memory and latency if measured."""
    from autopeft.objectives import LATENCY_MS, PEAK_MEMORY_MB, get_objective

    shown = [o for k, o in objectives.items() if k not in ("metric", "trainable_params")]
    shown += [get_objective(k) for k in (PEAK_MEMORY_MB, LATENCY_MS)
              if k not in objectives and any(r.get(k) is not None for r in front)]
    table = Table(title=title)
    columns = ["trial", metric_name, "params", "% base", *(o.key for o in shown), "configuration"]
    for col in columns:
        table.add_column(col, justify="left" if col == "configuration" else "right",
                         overflow="fold", min_width=20 if col == "configuration" else None)
    for r in sorted(front, key=lambda r: -r["metric"]):
        table.add_row(f"* {r['trial']}" if r["trial"] == picked else str(r["trial"]), f"{r['metric']:.4f}",
                      f"{int(r['trainable_params']):,}", f"{r['trainable_percent']:.3f}",
                      *(o.format(r.get(o.key)) for o in shown), r["peft"])
    Console().print(table)


def print_hand_picks(trials: list, objectives: dict, metric_name: str, name: str) -> None:
    """A line per warm start of the space (the hand-picks the search began with): beaten, or not;
    where one is beaten, how to check the lead."""
    from autopeft.objectives import directions
    from autopeft.results import hand_pick_line, hand_picks

    out = Console()  # stdout, beside the front table
    picks = hand_picks(trials, directions(objectives))
    for hp in picks:
        out.print(_escape(hand_pick_line(hp, metric_name)), highlight=False, soft_wrap=True)
    if any(hp.beaten_by for hp in picks):
        console.print(f"to check those leads over new seeds, on dev: autopeft hand-picks {name}",
                      highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def train(
    config: str = typer.Argument(..., help="An export file from `autopeft export`, or a hand-written one (model, task, peft)."),
    output: str = typer.Option("autopeft_trained", "--output", "-o", help="Folder for the trained weights."),
    train_examples: int = typer.Option(0, help="Training examples (0 = the whole train split)."),
    eval_examples: int = typer.Option(0, help="Dev examples (0 = the whole dev split)."),
    epochs: float = typer.Option(3.0, help="Epochs; the selection split (dev, or the search's holdout) is scored after each and the best epoch is kept."),
    learning_rate: Optional[float] = typer.Option(None, help="Default: the learning rate the config was found with."),
    batch_size: Optional[int] = typer.Option(None, help="Default: the search's batch size."),
    seed: Optional[int] = typer.Option(None),
    full_finetune: bool = typer.Option(False, "--full-finetune/--peft",
                                       help="Ignore the PEFT config and train every weight (a reference point)."),
    data_dir: Optional[str] = typer.Option(None, help="Folder laid out like GLUE's (env AUTOPEFT_DATA_DIR)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow store (default: the export's search store, else MLFLOW_TRACKING_URI)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
    run_name: Optional[str] = typer.Option(None, help="MLflow run name."),
    register: Optional[str] = typer.Option(None, help="Also register the trained MLflow Model under this name in the Model Registry."),
) -> None:
    """Train a configuration at full budget, keep the best epoch, save it (peft adapter where peft can
    hold the config), log it to MLflow as the run's MLflow Model."""
    from autopeft.export import load_export
    from autopeft.finetune import check_register, full_budget, log_training, train_exported
    from autopeft.tasks import resolve_data_dir

    check_register(full_finetune, register)
    exp = load_export(config)
    budget = full_budget(exp.budget, train_examples or None, epochs, eval_examples or None, learning_rate,
                         batch_size, seed)
    data = resolve_data_dir(data_dir)
    what = "full fine-tuning" if full_finetune else exp.peft.describe()
    console.print(f"train [bold]{_escape(what)}[/] on {exp.task} ({exp.model}): "
                  f"{budget.train_examples or 'all'} examples, {budget.epochs:g} epochs, lr {budget.learning_rate:g}")
    with _step_progress("train") as (on_step, note):
        def on_epoch(epoch: int, metrics: dict) -> None:
            note(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            console.print(f"epoch {epoch}: " + ", ".join(f"{budget.select_on} {k} {v:.4f}" for k, v in metrics.items()))

        result = train_exported(exp, budget, output, str(data) if data else None, full_finetune,
                                on_step=on_step, on_epoch=on_epoch)
    if result.note:
        console.print(f"[yellow]note:[/] {_escape(result.note)}", highlight=False, soft_wrap=True)
    run_id = log_training(result, exp, budget, full_finetune, tracking_uri, experiment, run_name, register)
    console.print(f"best epoch {result.best_epoch} (chosen on {result.select_on}): dev {result.metric_name} "
                  f"{result.metric:.4f}, "
                  f"{result.trainable_params:,} trainable parameters ({result.trainable_percent:.3f}%). "
                  f"Saved to {result.output_dir} ({result.form} form); MLflow run {run_id}"
                  + ("" if full_finetune else f", model runs:/{run_id}/model")
                  + (f", registered as {register!r}" if register else ""), soft_wrap=True)


# ------------------------------------------------------------------ after a search


def _pick_option() -> str | None:
    return typer.Option(None, help="Pick one: 'best' (highest metric within the constraints) or a trial number.")


def _parse_pick(value: str | None) -> tuple[bool, int | None]:
    """(picking?, trial number or None for the best)."""
    if value is None:
        return False, None
    if value.strip().lower() == "best":
        return True, None
    try:
        return True, int(value)
    except ValueError:
        from autopeft.errors import ConfigError
        raise ConfigError(f"--pick takes 'best' or a trial number, got {value!r}") from None


def _constraint(name: str):
    """The option of an objective's constraint (``--max-latency``), its help from the registry."""
    objective = next(o for o in available_objectives().values() if o.limit == name)
    bound = "at least" if objective.direction == "max" else "at most"
    unit = f" ({objective.unit})" if objective.unit else ""
    return typer.Option(None, help=f"Keep trials whose {objective.label} is {bound} this{unit}.")


_LIMIT = typer.Option(None, help="Any objective's constraint as NAME=VALUE, e.g. max_latency=2 (names: "
                                 + ", ".join(o.limit for o in available_objectives().values() if o.limit)
                                 + ", and those of plugin objectives); repeatable.")


def _limits(pairs: list[str] | None, **named: float | None) -> dict[str, float | None]:
    """The constraint flags plus ``--limit NAME=VALUE`` pairs, as ``results.pick`` takes them."""
    from autopeft.errors import ConfigError

    out = dict(named)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        try:
            out[key.strip().replace("-", "_")] = float(value)
        except ValueError:
            raise ConfigError(f"--limit takes NAME=VALUE with a number, e.g. max_latency=2.5; got {pair!r}") from None
        if not sep:
            raise ConfigError(f"--limit takes NAME=VALUE, e.g. max_latency=2.5; got {pair!r}")
    return out


def _load(search: str | None, tracking_uri: str | None, experiment: str):
    from autopeft.results import load_search

    with console.status("reading the tracking store"):
        return load_search(search, tracking_uri, experiment)


@app.command()
@friendly_errors
def pareto(
    search: Optional[str] = typer.Argument(None, help="Search name or MLflow parent run id (default: the latest search)."),
    max_params: Optional[int] = _constraint("max_params"),
    max_memory: Optional[float] = _constraint("max_memory"),
    max_latency: Optional[float] = _constraint("max_latency"),
    min_metric: Optional[float] = _constraint("min_metric"),
    limit: Optional[list[str]] = _LIMIT,
    pick: Optional[str] = _pick_option(),
    report: Optional[str] = typer.Option(None, help="Also write the interactive HTML Pareto report here (and log it to the search's run)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
) -> None:
    """Show a search's Pareto-optimal trials, best first; filter with constraints and pick one."""
    from autopeft.results import pick as choose

    record = _load(search, tracking_uri, experiment)
    picking, trial = _parse_pick(pick)
    rows = choose(record.front, trial, **_limits(limit, max_params=max_params, max_memory=max_memory,
                                                 max_latency=max_latency, min_metric=min_metric))
    chosen = rows[0]["trial"] if picking else None
    done = sum(t["status"] == "COMPLETE" for t in record.trials)
    print_front(rows, record.metric_name, record.objectives, picked=chosen,
                title=f"Pareto front of {record.name} ({record.task}, {record.model}): "
                      f"{len(rows)} of {len(record.front)} optimal trials, {done} completed")
    print_hand_picks(record.trials, record.objectives, record.metric_name, record.name)
    if report:
        from autopeft.report import log_report, write_report

        title = f"Pareto report: {record.name}"
        path = write_report(record.trials, record.objectives, record.metric_name, report, title, record.name,
                            record.tracking_uri)
        log_report(record, title)
        console.print(f"report: {path}")
    if chosen is not None:
        from autopeft.report import export_command

        console.print(f"picked trial {chosen}: export it with `{export_command(record.name, chosen)}`")


@app.command("hand-picks")
@friendly_errors
def hand_picks_cmd(
    search: Optional[str] = typer.Argument(None, help="Search name or MLflow parent run id (default: the latest search)."),
    seeds: int = typer.Option(3, help="Training runs of each configuration, with seeds the search did not use."),
    workers: int = typer.Option(2, help="Training runs at a time, each in its own process on one CPU thread (as a search's trials)."),
    data_dir: Optional[str] = typer.Option(None, help="Folder laid out like GLUE's (env AUTOPEFT_DATA_DIR). Unset: the Hugging Face Hub."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
) -> None:
    """Retrain each warm start (hand-pick) of a search and the best trial that beat it, over new
    seeds at the search's budget, and say on dev whether the search's lead holds."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autopeft.retrain import candidates, log_verdicts, retrain_hand_picks, to_retrain, verdict_line
    from autopeft.tasks import resolve_data_dir

    record = _load(search, tracking_uri, experiment)
    configs = len(to_retrain(candidates(record, seeds)))
    data = resolve_data_dir(data_dir)
    split = record.budget.get("select_on", "dev")
    console.print(f"retraining {configs} configurations of {record.name} x {seeds} seeds at the search's budget, "
                  f"scored on dev" + ("" if split != "dev" else " (the split the search selected on: a lead there "
                                      "is still flattered by the choice; --select-on holdout avoids that)"),
                  soft_wrap=True)
    with Progress(TextColumn("[bold]hand-picks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.description}"), console=console) as bar:
        task = bar.add_task("", total=configs * seeds)

        def on_run(trial, seed: int, metric: float) -> None:
            bar.update(task, advance=1, description=f"trial {trial.trial} seed {seed}: {metric:.4f}")
        verdicts = retrain_hand_picks(record, seeds, str(data) if data else None, on_run=on_run, workers=workers)
    out = Console()
    for v in verdicts:
        out.print(_escape(verdict_line(v, record.metric_name)), highlight=False, soft_wrap=True)
    console.print(f"MLflow run {log_verdicts(record, verdicts)} (under the search's run)")


@app.command()
@friendly_errors
def export(
    search: Optional[str] = typer.Argument(None, help="Search name or MLflow parent run id (default: the latest search)."),
    output: str = typer.Option("autopeft_best.json", "--output", "-o", help="The export file to write."),
    pick: Optional[str] = typer.Option("best", help="'best' (highest metric within the constraints) or a trial number."),
    max_params: Optional[int] = _constraint("max_params"),
    max_memory: Optional[float] = _constraint("max_memory"),
    max_latency: Optional[float] = _constraint("max_latency"),
    min_metric: Optional[float] = _constraint("min_metric"),
    limit: Optional[list[str]] = _LIMIT,
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
) -> None:
    """Write a Pareto-optimal configuration as one self-contained, versioned JSON file."""
    from autopeft.export import save_export
    from autopeft.results import pick as choose, to_export

    record = _load(search, tracking_uri, experiment)
    _, trial = _parse_pick(pick or "best")
    chosen = choose(record.front, trial, **_limits(limit, max_params=max_params, max_memory=max_memory,
                                                   max_latency=max_latency, min_metric=min_metric))[0]
    path = save_export(to_export(record, chosen), output)
    _note_peft_form(path)
    console.print(f"exported trial {chosen['trial']} of {record.name} ({_escape(chosen['peft'])}; "
                  f"{record.metric_name} {chosen['metric']:.4f}, {chosen['trainable_params']:,} params) to {path}")


def _note_peft_form(path: Path) -> None:
    import json

    from autopeft.peft_export import PeftForm

    reason = json.loads(Path(path).read_text())["native"].get("peft_unsupported")
    if reason:
        console.print(f"[yellow]note:[/] {_escape(PeftForm(None, reason).note())}", highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def dashboard(
    search: Optional[str] = typer.Argument(None, help="Search name or MLflow parent run id to open (default: the latest search)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
    port: int = typer.Option(0, help="Port (0 = a free one)."),
    host: str = typer.Option("127.0.0.1", help="Interface; the default keeps the UI on this machine."),
) -> None:
    """Start the MLflow UI on the tracking store, open on a search's trials; Ctrl-C stops it."""
    from autopeft.dashboard import serve

    serve(tracking_uri, host, port, say=lambda text: print(text, flush=True), search=search, experiment=experiment)


class _step_progress:
    """A rich progress bar over optimizer steps; yields (on_step, note) callbacks."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.description}"), console=console)
        self.task = None

    def __enter__(self):
        self.progress.start()
        self.task = self.progress.add_task("", total=None)

        def on_step(step: int, total: int, loss: float) -> None:
            self.progress.update(self.task, completed=step, total=total)

        def note(text: str) -> None:
            self.progress.update(self.task, description=text)
        return on_step, note

    def __exit__(self, *exc):
        self.progress.stop()


if __name__ == "__main__":
    app()
