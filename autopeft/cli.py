"""The ``autopeft`` command line. Each command is a small function; errors a user can fix are
printed as one message (no traceback) with exit code 2."""

from __future__ import annotations

import functools
import os
import sys
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
    sampler: str = typer.Option("tpe", help="Optuna sampler: tpe (MO-TPE), nsga2, random, gp."),
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
    resume: Optional[str] = typer.Option(None, help="Continue the search of this name with the settings it was started with (from --storage / --workdir)."),
) -> None:
    """Run a multi-objective search and print its Pareto front.

    Running the same --name again continues that search; so does --resume NAME.
    """
    from autopeft.config import TrainBudget
    from autopeft.search import SearchSettings, default_name, prepare, run_search
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
        experiment=experiment, ray_address=ray_address, trial_memory_limit_mb=trial_memory_limit_mb)
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


def print_front(records: list[dict], metric_name: str, title: str) -> None:
    table = Table(title=title)
    for col in ("trial", metric_name, "params", "% base", "mem MB", "configuration"):
        table.add_column(col, justify="left" if col == "configuration" else "right",
                         overflow="fold", min_width=20 if col == "configuration" else None)
    front = sorted((r for r in records if r["pareto"]), key=lambda r: -r["metric"])
    for r in front:
        table.add_row(str(r["trial"]), f"{r['metric']:.4f}", f"{int(r['trainable_params']):,}",
                      f"{r['trainable_percent']:.3f}", f"{r['peak_memory_mb']:.0f}", r["peft"])
    Console().print(table)


if __name__ == "__main__":
    app()
