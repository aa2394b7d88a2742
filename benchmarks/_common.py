"""What the quality benchmarks share: the hand-picked baselines, one training run, a resumable
job pool, and MLflow logging.

A training run here is exactly a search trial (``autopeft.trial.run_config``) at the budget given,
full fine-tuning included (``full_finetune=True``: the same loop with every weight trainable). Each run records the CPU
seconds of its own process (one torch thread), so compute is compared as CPU time, not wall time.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable

# Pareto dominance that noise cannot fake (mean metric >= and params <=, strictly better in one, a
# better metric by more than the larger seed std): the product's rule, which autopeft hand-picks uses.
from autopeft.pareto import dominates_beyond_noise

dominates = dominates_beyond_noise  # what the benchmarks call

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model and data are local; never wait on Hub retries
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("AUTOPEFT_BENCH_RESULTS", HERE / "results"))  # elsewhere for smoke runs
# The base model every benchmark trains: the embedded default, or a local folder (a machine without
# the embedded package, e.g. the GPU machine of gpu_suite.py, carries the same weights as files).
MODEL = os.environ.get("AUTOPEFT_BENCH_MODEL", "all-MiniLM-L6-v2")
# Where each run trains: cpu, or cuda on a GPU machine (one GPU shared by the --workers processes).
DEVICE = os.environ.get("AUTOPEFT_BENCH_DEVICE", "cpu")
# The suite: tasks a sentence-embedding model learns on this CPU budget. RTE, MRPC and CoLA sat at
# the majority class for every method in the last round (frozen-feature probes of the model give
# RTE 0.48-0.51 accuracy, CoLA MCC 0.07-0.12, MRPC 0.70 accuracy against a 0.68 majority).
TASKS = ("sst2", "mr", "mpqa", "trec", "stsb", "sick_r", "sick_e")
SUITE_RESULTS = RESULTS / "suite"  # the suite's run CSVs, tables and its own MLflow store
FULL_FT = "full_ft"
PEFT_LR, FULL_FT_LR = 5e-3, 5e-5  # full fine-tuning diverges at PEFT's rate
# Each baseline's usual rate at this short budget (a few hundred steps); PEFT_LR for the rest.
# The parallel adapter, prefix tuning and MAM collapse to the majority class at 2e-3..1e-2 (SST-2,
# 2,048 examples: train loss stays at ln 2 for all three rates and seeds) and learn at 5e-4
# (holdout 0.814 parallel, 0.784 prefix30, seed 0), so their sweeps sit an order lower.
USUAL_LR = {FULL_FT: FULL_FT_LR, "parallel": 5e-4, "prefix30": 5e-4, "mam": 5e-4}
# Each baseline's learning-rate sweep: three rates around its usual one (most PEFT 2e-3, 5e-3,
# 1e-2; parallel, prefix30, MAM 2e-4, 5e-4, 1e-3; full fine-tuning 2e-5, 5e-5, 1e-4), the best
# chosen on the held-out selection split.
LR_FACTORS = (0.4, 1.0, 2.0)
# Fresh worker processes: the parent may hold Ray's or torch's threads, which fork does not copy.
SPAWN = multiprocessing.get_context("spawn")


def baselines(num_layers: int, hidden: int) -> dict[str, Any]:
    """What an engineer picks by hand, with each paper's (or `adapters`') default sizes.

    None stands for full fine-tuning. Reduction factor r means a bottleneck of hidden / r units.
    """
    from autopeft.config import PeftConfig
    from autopeft.methods.bitfit import BitFitConfig
    from autopeft.methods.ia3 import IA3Config
    from autopeft.methods.lora import LoRAConfig
    from autopeft.methods.par_bn import ParBnConfig
    from autopeft.methods.prefix import PrefixConfig
    from autopeft.methods.seq_bn import SeqBnConfig

    every = tuple(range(num_layers))
    prefix30 = PrefixConfig(every, 30)  # MLP-reparameterised, as Li & Liang train it
    parallel = ParBnConfig(every, hidden // 2, 4.0, position="ffn")  # He et al.; `adapters`' ParBnConfig()
    return {
        FULL_FT: None,
        "lora_r8": PeftConfig((LoRAConfig(every, 8, 16, ("query", "value")),)),
        "pfeiffer": PeftConfig((SeqBnConfig(every, hidden // 16),)),
        "houlsby": PeftConfig((SeqBnConfig(every, hidden // 16, position="both"),)),
        "parallel": PeftConfig((parallel,)),
        "prefix30": PeftConfig((prefix30,)),
        "ia3": PeftConfig((IA3Config(every),)),
        "bitfit": PeftConfig((BitFitConfig(every),)),
        "mam": PeftConfig((prefix30, parallel)),
    }


def usual_lr(name: str) -> float:
    return USUAL_LR.get(name, PEFT_LR)


def lr_sweep(name: str) -> tuple[float, ...]:
    """The three learning rates baseline ``name`` is tried at."""
    return tuple(float(f"{usual_lr(name) * f:.3g}") for f in LR_FACTORS)


def in_sweep(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Baseline runs at the rates of today's sweeps. Runs at rates a sweep no longer holds stay in
    the CSV as history, but neither choose a rate nor count as cost."""
    return [r for r in rows if float(r["lr"]) in lr_sweep(r["name"])]


def train_once(task: str, peft_json: str | None, budget_json: str, data_dir: str) -> dict[str, Any]:
    """One run in this (worker) process; ``peft_json`` None = full fine-tuning.

    ``metric`` is on the split the budget selects on; a budget that selects on a holdout also
    gets ``dev_metric``, the same trained model on the dev split (what the tables report).
    """
    import torch

    from autopeft.config import PeftConfig, TrainBudget
    from autopeft.tasks import load_task
    from autopeft.trial import TrialContext, run_config

    torch.set_num_threads(1)
    budget = TrainBudget.from_dict(json.loads(budget_json))
    full = peft_json is None
    peft = PeftConfig(()) if full else PeftConfig.from_json(peft_json)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        report = run_config(TrialContext(MODEL, task, budget, data_dir), peft, device=DEVICE, full_finetune=full,
                            report_dev=True)
    except Exception as exc:  # a failed run (a diverged rate) is a result, and what it spent counts as cost
        return {"metric": math.nan, "dev_metric": math.nan, "trainable_params": math.nan,
                "train_loss": f"{type(exc).__name__}: {exc}"[:200], "cpu_seconds": time.process_time() - cpu0,
                "wall_seconds": time.perf_counter() - wall0}
    dev_key = f"dev_{load_task(task).primary_metric}"
    return {"metric": report["metric"], "dev_metric": report.get(dev_key, report["metric"]),
            "trainable_params": report["trainable_params"],
            "train_loss": report["train_loss"], "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.perf_counter() - wall0}


def majority_metric(task_name: str, data_dir: str, train_examples: int | None, eval_examples: int | None,
                    seeds: int, holdout: float | None = None) -> float:
    """The metric of a model that learned nothing: it predicts the majority label of its training
    subsample on its dev subsample (for regression, a constant: correlation 0); mean over seeds.
    With ``holdout``, on the rows held out of train instead (as trials with ``select_on="holdout"``
    score), trained on the rest. A run at this value has not learned, and beating another one
    there is a tie, not a win."""
    from autopeft.tasks import HOLDOUT, compute_metrics, load_splits, load_task
    from autopeft.train import subsample

    task = load_task(task_name)
    if task.is_regression:
        return 0.0
    splits = load_splits(task, data_dir, HOLDOUT, holdout) if holdout is not None else load_splits(task, data_dir)
    scores = []
    for seed in range(seeds):
        labels = subsample(splits.train, train_examples, seed).labels
        guess = max(set(labels), key=labels.count)
        refs = subsample(splits.select, eval_examples, seed).labels
        scores.append(compute_metrics(task, [guess] * len(refs), refs)[task.primary_metric])
    return sum(scores) / len(scores)


def _quiet_worker() -> None:
    """Set up a benchmark worker process: quiet libraries, and a worker that ends with its driver."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("adapters").setLevel(logging.ERROR)  # "none are activated" at build time
    _exit_with_parent()


_watching_parent = False


def _exit_with_parent(poll_s: float = 2.0) -> None:
    """A driver killed with -9 leaves its pool's workers running their job (a multifidelity run is
    ~40 minutes) and writing to the results the resumed driver reads; a worker whose parent is gone
    (re-parented, so ``getppid`` changes) exits instead."""
    import threading

    global _watching_parent
    if _watching_parent:
        return
    _watching_parent = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(jobs: list[dict[str, Any]], csv_path: Path, data_dir: str, workers: int = 2,
             key: tuple[str, ...] = ("task", "name", "seed"), extra: tuple[str, ...] = (),
             deadline: float | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` (dicts with task, peft_json, budget_json and key fields), ``workers`` at a time.

    Rows already in ``csv_path`` (same key) are not rerun, so a stopped benchmark resumes; each
    finished run is appended at once. ``extra``: more result columns (``dev_metric``) for new files.
    ``deadline`` (a ``time.time()``): past it no new run starts (those running finish), so a machine
    lent for a fixed time returns complete rows and the same command resumes the rest elsewhere.
    """
    done = read_csv(csv_path)
    seen = {tuple(str(r[k]) for k in key) for r in done}
    todo = [j for j in jobs if tuple(str(j[k]) for k in key) not in seen]
    late = deadline is not None and time.time() > deadline
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {csv_path.name}; "
          + (f"past the deadline: {len(todo)} left for a later call" if late and todo else f"running {len(todo)}"),
          flush=True)
    if late:
        todo = []
    fields = [*key, "metric", *extra, "trainable_params", "train_loss", "cpu_seconds", "wall_seconds", "peft"]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists()
    if done and list(done[0]) != fields:  # appending other columns would misalign every later row
        raise SystemExit(f"{csv_path} has columns {list(done[0])}, this run writes {fields}: "
                         "move the file aside (or add the missing columns) and run again")
    with open(csv_path, "a", newline="") as f, ProcessPoolExecutor(workers, SPAWN, initializer=_quiet_worker) as pool:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        futures = {pool.submit(train_once, j["task"], j["peft_json"], j["budget_json"], data_dir): j for j in todo}
        stopped = False
        for n, fut in enumerate(as_completed(futures), 1):
            if not stopped and deadline is not None and time.time() > deadline:
                stopped = True
                for other in futures:
                    other.cancel()  # only those not started; a cancelled run is simply not in the CSV
            if fut.cancelled():
                continue
            job = futures[fut]
            try:
                row = {**{k: job[k] for k in key}, **fut.result(), "peft": job["peft_json"] or FULL_FT}
            except Exception as exc:  # a failed run is a result too (e.g. a diverged baseline)
                row = {**{k: job[k] for k in key}, "metric": math.nan, **{k: math.nan for k in extra},
                       "trainable_params": math.nan,
                       "peft": job["peft_json"] or FULL_FT, "train_loss": f"{type(exc).__name__}: {exc}"[:200]}
            writer.writerow(row)
            f.flush()
            done.append({k: str(v) for k, v in row.items()})
            print(f"[{n}/{len(todo)}] {' '.join(str(job[k]) for k in key)}: "
                  f"metric {float(row['metric']):.4f} params {row['trainable_params']} "
                  f"cpu {float(row.get('cpu_seconds') or 0):.0f}s", flush=True)
    return done


class TreeCPU:
    """CPU-seconds (user + system) spent by this process and every process under it while in the
    ``with`` block: a search's driver, Ray's GCS, raylet and trial workers. A thread samples the
    process tree every ``interval`` s and keeps each process's last reading, so work elsewhere on
    the machine is not counted; a process that ends between two samples loses at most its last
    ``interval`` s. ``on_update(seconds so far)`` runs after each sample, so a caller can keep the
    figure on disk and a killed search loses none of what it spent."""

    def __init__(self, interval: float = 1.0, on_update: Callable[[float], None] | None = None):
        import threading

        self.interval, self.seconds, self.on_update = interval, 0.0, on_update
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}

    def _sample(self) -> dict[tuple[int, float], float]:
        import psutil

        me = psutil.Process()
        out = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    out[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:  # ended while being read
                continue
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(self._sample())
            if self.on_update is not None:
                self.on_update(self._total())

    def _total(self) -> float:
        return sum(v - self._start.get(k, 0.0) for k, v in self._last.items())

    def __enter__(self) -> "TreeCPU":
        self._start = self._sample()  # what already ran (this process's imports) is not counted
        self._last = dict(self._start)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())
        self.seconds = self._total()


def written_at(path: Path) -> float:
    """When ``path``'s content was last written: its last commit's time when the file is committed
    and unchanged (a clone stamps every file with the checkout's time), else its modification time."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=path.parent, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    if not git("status", "--porcelain", "--", path.name):
        committed = git("log", "-1", "--format=%ct", "--", path.name)
        if committed:
            return float(committed)
    return path.stat().st_mtime


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        # Every row's columns, in first-seen order: rows kept from an older CSV may lack a newer one.
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def write_task_table(path: Path, rows: list[dict[str, Any]], tasks: Iterable[str]) -> None:
    """Write a per-task table, keeping the rows of tasks this run did not touch: the suite runs one
    task at a time (run_suite.sh), so each task's rows land as soon as it finishes. Tasks keep the
    suite's order (TASKS), whichever ran last, so rerunning one task does not reorder the table."""
    tasks = set(tasks)
    kept = [r for r in read_csv(path) if r["task"] not in tasks]
    order = {t: i for i, t in enumerate(TASKS)}
    write_csv(path, sorted(kept + rows, key=lambda r: order.get(r["task"], len(order))))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def variance_split(groups: list[list[float]]) -> dict[str, float]:
    """One-way analysis of variance over configurations, each a list of its runs (one per seed):
    one run's seed noise (pooled within-configuration std), the spread of the configurations'
    means, what noise alone gives the means (noise / sqrt(seeds)), and the share of one run's
    variance the configuration explains. A share near zero: one run cannot rank them."""
    noise = statistics.fmean(statistics.variance(g) for g in groups)
    means = [statistics.fmean(g) for g in groups]
    seeds = statistics.fmean(len(g) for g in groups)
    config_var = max(0.0, statistics.variance(means) - noise / seeds)
    return {"seed_std": math.sqrt(noise), "means_std": statistics.stdev(means),
            "noise_only": math.sqrt(noise / seeds), "config_share": config_var / (config_var + noise)}


def summarise(rows: list[dict[str, str]], group: Callable[[dict[str, str]], tuple],
              column: str = "metric", cost: str = "cpu_seconds") -> dict[tuple, dict[str, float]]:
    """Group runs; per group: ``column``'s mean/std over seeds, params, total ``cost`` seconds (in
    key ``cpu_seconds``; ``wall_seconds`` where runs share a GPU, whose CPU time says little), runs."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(group(r), []).append(r)
    out = {}
    for g, rs in groups.items():
        mean, std = mean_std(float(r[column]) for r in rs)
        params = [float(r["trainable_params"]) for r in rs if r["trainable_params"] not in ("", "nan")]
        out[g] = {"mean": mean, "std": std, "params": params[0] if params else math.nan,
                  "cpu_seconds": sum(float(r[cost] or 0) for r in rs), "runs": len(rs)}
    return out


def resumable_study(storage: str, name: str, sampler: str, seed: int, expected_trials: int) -> Any:
    """A benchmark run's Optuna study, new or resumed, with its sampler seeded as a search seeds it
    (``autopeft.samplers.make_sampler``: a resumed run draws anew instead of replaying duplicates)."""
    import optuna

    from autopeft.samplers import make_sampler

    try:
        asked = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        asked = 0
    return optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                               sampler=make_sampler(sampler, seed, expected_trials, asked), load_if_exists=True)


def tracking_uri(store: Path = RESULTS) -> str:
    """MLFLOW_TRACKING_URI, else the SQLite store in ``store``."""
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")


def log_mlflow(run_name: str, params: dict[str, Any], metrics: dict[str, float], artifacts: Iterable[Path],
               store: Path = RESULTS) -> None:
    """One run in experiment autopeft-benchmarks (``store``/mlflow.db unless MLFLOW_TRACKING_URI is set)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(store))
    mlflow.set_experiment("autopeft-benchmarks")
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params(params)
        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
        for path in artifacts:
            mlflow.log_artifact(str(path))


def finish_hv_plot(fig: Any, axes: Iterable[Any], level: float, xlabel: str, path: Path) -> None:
    """The hypervolume-progress plots' common ending: the target level as a dashed line on each
    axis, labels and legend, saved as a PNG."""
    for ax in axes:
        ax.axhline(level, ls="--", color="black", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("hypervolume / best final hypervolume")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_with_data_dir(ap: Any) -> Any:
    """Add the options every quality benchmark takes (--workers, --data-dir) and parse; no data
    folder is one line and exit code 2 (argparse's own error)."""
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, one process and one thread each")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOPEFT_DATA_DIR"))
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("give --data-dir or AUTOPEFT_DATA_DIR (a folder laid out like GLUE's, e.g. ../shared/data)")
    return args


@functools.lru_cache(maxsize=None)  # the report asks per rung and per table; each call loads the task
def no_skill_at_rung(task: str, data_dir: str, holdout_size: float, holdout_seed: int, seed: int,
                     fraction: float, confidence: float = 0.0) -> float:
    """The no-skill level successive halving compares a rung's metric with
    (``fidelity.RungLedger.has_learned``) on the selection rows a trial is scored on at a rung with
    ``fraction`` of the budget (drawn as train.py draws them, with the run's seed):
    ``tasks.chance_score`` at ``confidence`` (0: what a constant prediction scores)."""
    from autopeft.fidelity import rung_rows
    from autopeft.tasks import chance_score, load_task
    from autopeft.tasks.selection import load_splits
    from autopeft.train import Batches

    spec = load_task(task)
    labels = list(load_splits(spec, data_dir, "holdout", holdout_size, holdout_seed).select.labels)
    rows = Batches([[] for _ in labels], labels).sample(rung_rows(fraction, len(labels)), seed)
    return chance_score(spec, rows.labels, confidence)
