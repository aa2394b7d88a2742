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


@app.command()
@friendly_errors
def search(
    name: Optional[str] = typer.Option(None, help="Search name: Optuna study, Ray experiment and MLflow parent run. Generated when omitted."),
    model: str = typer.Option("all-MiniLM-L6-v2", help="Base model: the embedded default, a local folder or a Hub id."),
    task: str = typer.Option("sst2", help="A shipped task (sst2, rte, mrpc, cola, stsb, cb) or a task YAML path."),
    space: str = typer.Option("autopeft", help="A shipped search space (autopeft, lora, hybrid) or a YAML path."),
    num_samples: int = typer.Option(8, help="Number of trials."),
    max_concurrent_trials: int = typer.Option(2, help="Trials run at once."),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs reserved per trial (its torch thread count)."),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs reserved per trial."),
    sampler: str = typer.Option("gp", help="Optuna sampler: gp (Gaussian-process Bayesian optimisation), "
                                           "tpe (MO-TPE), nsga2, random."),
    memory_objective: bool = typer.Option(False, "--memory-objective/--no-memory-objective",
                                          help="Also minimise peak training memory."),
    seed: int = typer.Option(0, help="Seed of the sampler and of every trial's training."),
    train_examples: Optional[int] = typer.Option(2048, help="Training examples per trial (0 = all)."),
    eval_examples: Optional[int] = typer.Option(0, help="Dev examples per trial (0 = the whole dev split)."),
    epochs: float = typer.Option(1.0, help="Epochs per trial."),
    max_steps: Optional[int] = typer.Option(None, help="Cap on training steps per trial."),
    batch_size: int = typer.Option(16),
    max_seq_length: int = typer.Option(64),
    learning_rate: float = typer.Option(5e-3),
    data_dir: Optional[str] = typer.Option(None, help="Folder laid out like GLUE's (env AUTOPEFT_DATA_DIR). Unset: the Hugging Face Hub."),
    workdir: str = typer.Option("autopeft_runs", help="Where the Optuna study (SQLite) and Ray results go."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite:///<workdir>/optuna.db)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Join an existing Ray cluster (default: start a local one)."),
    trial_memory_limit_mb: Optional[float] = typer.Option(None, help="Fail a trial whose peak training memory passes this many MB."),
    retry_lost_trials: int = typer.Option(1, help="Ask a configuration again, up to this many times, when its trial "
                                                  "dies with its Ray node or worker process (0: count it as failed)."),
    resume: Optional[str] = typer.Option(None, help="Continue the search of this name with the settings it was started with (from --storage / --workdir)."),
) -> None:
    """Run a multi-objective search and print its Pareto front.

    Running the same --name again continues that search; so does --resume NAME.
    """
    from autopeft.config import TrainBudget
    from autopeft.search import SearchSettings, default_name
    from autopeft.study import stored_settings

    if resume:
        url = storage or SearchSettings(name=resume, workdir=workdir).storage_url()
        settings = SearchSettings.from_dict(stored_settings(resume, url))
        if ray_address:
            settings = settings.replace(ray_address=ray_address)
        _run_and_report(settings)
        return

    budget = TrainBudget(train_examples=train_examples or None, eval_examples=eval_examples or None, epochs=epochs,
                         max_steps=max_steps, batch_size=batch_size, max_seq_length=max_seq_length,
                         learning_rate=learning_rate, seed=seed)
    settings = SearchSettings(
        name=name or default_name(task, space), model=model, task=task, space=space, budget=budget,
        num_samples=num_samples, max_concurrent_trials=max_concurrent_trials, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, sampler=sampler, memory_objective=memory_objective, seed=seed,
        data_dir=data_dir, workdir=str(Path(workdir).resolve()), storage=storage, tracking_uri=tracking_uri,
        experiment=experiment, ray_address=ray_address, trial_memory_limit_mb=trial_memory_limit_mb,
        retry_lost_trials=retry_lost_trials)
    _run_and_report(settings)


def _run_and_report(settings) -> None:
    from autopeft.search import prepare, run_search

    prepared = prepare(settings)  # every input checked before Ray starts
    for note in prepared.notes:
        console.print(f"[yellow]note:[/] {_escape(note)}", highlight=False)
    console.print(f"search [bold]{settings.name}[/]: {settings.num_samples} trials of {settings.model} on "
                  f"{settings.task}, space {settings.space}, sampler {settings.sampler}")
    try:
        result = run_search(settings, prepared=prepared)
    except KeyboardInterrupt:
        console.print(f"stopped. Finished trials are saved; continue with: autopeft search --resume {settings.name}"
                      + ("" if settings.storage else f" --workdir {settings.workdir}"), soft_wrap=True)
        raise typer.Exit(130)
    if any(r["pareto"] for r in result.records):
        print_front(result.records, result.metric_name, title=f"Pareto front of {result.name}")
    else:
        console.print("no trial completed, so there is no Pareto front")
    failed = [r for r in result.records if r["status"] == "FAILED"]
    done = sum(r["status"] == "COMPLETE" for r in result.records)
    console.print(f"{done} trials completed, {len(failed)} failed. MLflow: {result.tracking_uri} "
                  f"(parent run {result.parent_run_id})")
    for r in failed:
        console.print(f"  trial {r['trial']} failed ({r['failure']}): {_escape(str(r['error']))[:300]}")


def print_front(records: list[dict], metric_name: str, title: str, picked: int | None = None) -> None:
    table = Table(title=title)
    for col in ("trial", metric_name, "params", "% base", "mem MB", "configuration"):
        table.add_column(col, justify="left" if col == "configuration" else "right",
                         overflow="fold", min_width=20 if col == "configuration" else None)
    front = sorted((r for r in records if r["pareto"]), key=lambda r: -r["metric"])
    for r in front:
        table.add_row(f"* {r['trial']}" if r["trial"] == picked else str(r["trial"]), f"{r['metric']:.4f}", f"{int(r['trainable_params']):,}",
                      f"{r['trainable_percent']:.3f}", f"{r['peak_memory_mb']:.0f}", r["peft"])
    Console().print(table)


@app.command()
@friendly_errors
def train(
    config: str = typer.Argument(..., help="An export file from `autopeft export`, or a hand-written one (model, task, peft)."),
    output: str = typer.Option("autopeft_trained", "--output", "-o", help="Folder for the trained weights."),
    train_examples: int = typer.Option(0, help="Training examples (0 = the whole train split)."),
    eval_examples: int = typer.Option(0, help="Dev examples (0 = the whole dev split)."),
    epochs: float = typer.Option(3.0, help="Epochs; the dev set is scored after each and the best epoch is kept."),
    learning_rate: Optional[float] = typer.Option(None, help="Default: the learning rate the config was found with."),
    batch_size: Optional[int] = typer.Option(None, help="Default: the search's batch size."),
    seed: Optional[int] = typer.Option(None),
    full_finetune: bool = typer.Option(False, "--full-finetune/--peft",
                                       help="Ignore the PEFT config and train every weight (a reference point)."),
    data_dir: Optional[str] = typer.Option(None, help="Folder laid out like GLUE's (env AUTOPEFT_DATA_DIR)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow store (default: the export's search store, else MLFLOW_TRACKING_URI)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
    run_name: Optional[str] = typer.Option(None, help="MLflow run name."),
) -> None:
    """Train a configuration at full budget, keep the best epoch, save the PEFT weights, log to MLflow."""
    from autopeft.export import load_export
    from autopeft.finetune import full_budget, log_training, train_exported
    from autopeft.tasks import resolve_data_dir

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
            console.print(f"epoch {epoch}: " + ", ".join(f"dev {k} {v:.4f}" for k, v in metrics.items()))

        result = train_exported(exp, budget, output, str(data) if data else None, full_finetune,
                                on_step=on_step, on_epoch=on_epoch)
    run_id = log_training(result, exp, budget, full_finetune, tracking_uri, experiment, run_name)
    console.print(f"best epoch {result.best_epoch}: dev {result.metric_name} {result.metric:.4f}, "
                  f"{result.trainable_params:,} trainable parameters ({result.trainable_percent:.3f}%). "
                  f"Saved to {result.output_dir}; MLflow run {run_id}")


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


def _load(search: str | None, tracking_uri: str | None, experiment: str):
    from autopeft.results import load_search

    with console.status("reading the tracking store"):
        return load_search(search, tracking_uri, experiment)


@app.command()
@friendly_errors
def pareto(
    search: Optional[str] = typer.Argument(None, help="Search name or MLflow parent run id (default: the latest search)."),
    max_params: Optional[int] = typer.Option(None, help="Keep trials with at most this many trainable parameters."),
    max_memory: Optional[float] = typer.Option(None, help="Keep trials with at most this peak training memory (MB)."),
    min_metric: Optional[float] = typer.Option(None, help="Keep trials with at least this metric."),
    pick: Optional[str] = _pick_option(),
    report: Optional[str] = typer.Option(None, help="Also write the interactive HTML Pareto report here (and log it to the search's run)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
) -> None:
    """Show a search's Pareto-optimal trials, best first; filter with constraints and pick one."""
    from autopeft.results import pick as choose

    record = _load(search, tracking_uri, experiment)
    picking, trial = _parse_pick(pick)
    rows = choose(record.front, max_params, max_memory, min_metric, trial)
    chosen = rows[0]["trial"] if picking else None
    done = sum(t["status"] == "COMPLETE" for t in record.trials)
    print_front(rows, record.metric_name, title=f"Pareto front of {record.name} ({record.task}, {record.model}): "
                f"{len(rows)} of {len(record.front)} optimal trials, {done} completed", picked=chosen)
    if report:
        from autopeft.report import log_report, write_report

        path = write_report(record.trials, record.objectives, record.metric_name, report, f"Pareto report: {record.name}")
        log_report(record.tracking_uri, record.parent_run_id, record.trials, record.objectives, record.metric_name,
                   f"Pareto report: {record.name}")
        console.print(f"report: {path}")
    if chosen is not None:
        console.print(f"picked trial {chosen}: export it with "
                      f"`autopeft export {record.name} --pick {chosen} -o autopeft_best.json`")


@app.command()
@friendly_errors
def export(
    search: Optional[str] = typer.Argument(None, help="Search name or MLflow parent run id (default: the latest search)."),
    output: str = typer.Option("autopeft_best.json", "--output", "-o", help="The export file to write."),
    pick: Optional[str] = typer.Option("best", help="'best' (highest metric within the constraints) or a trial number."),
    max_params: Optional[int] = typer.Option(None),
    max_memory: Optional[float] = typer.Option(None),
    min_metric: Optional[float] = typer.Option(None),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI."),
    experiment: str = typer.Option("autopeft", help="MLflow experiment."),
) -> None:
    """Write a Pareto-optimal configuration as one self-contained, versioned JSON file."""
    from autopeft.export import save_export
    from autopeft.results import pick as choose, to_export

    record = _load(search, tracking_uri, experiment)
    _, trial = _parse_pick(pick or "best")
    chosen = choose(record.front, max_params, max_memory, min_metric, trial)[0]
    path = save_export(to_export(record, chosen), output)
    console.print(f"exported trial {chosen['trial']} of {record.name} ({_escape(chosen['peft'])}; "
                  f"{record.metric_name} {chosen['metric']:.4f}, {chosen['trainable_params']:,} params) to {path}")


@app.command()
@friendly_errors
def dashboard(
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    port: int = typer.Option(0, help="Port (0 = a free one)."),
    host: str = typer.Option("127.0.0.1", help="Interface; the default keeps the UI on this machine."),
) -> None:
    """Start the MLflow UI on the tracking store; Ctrl-C stops it."""
    from autopeft.dashboard import serve

    serve(tracking_uri, host, port, say=lambda text: print(text, flush=True))


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
