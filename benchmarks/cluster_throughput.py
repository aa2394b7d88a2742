"""Trials per hour of the same search on a 1-node and a 2-node Ray cluster on this machine.

Each cluster is real (``ray start --head`` [+ ``ray start --address``], one CPU per node, on
loopback) and the search joins it with ``ray_address`` exactly as ``autopeft search --ray-address``
does. The clock runs over the search only (cluster start-up excluded). Prints a table, writes a
CSV and logs one MLflow run with the figures.

    PYTHONPATH=. .venv/bin/python benchmarks/cluster_throughput.py --trials 6
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # data and model are local; never wait on Hub retries
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(REPO / "tests"))  # local_services: the same service helpers as the cluster test

import local_services as services  # noqa: E402


def run_once(nodes: int, args: argparse.Namespace, work: Path) -> dict:
    from autopeft.config import TrainBudget
    from autopeft.search import SearchSettings, run_search

    node_env = {"AUTOPEFT_DATA_DIR": str(Path(args.data_dir).resolve())}
    started: list[services.Service] = []
    try:
        head, address = services.start_ray_head(work, cpus=1, env=node_env)
        started.append(head)
        for i in range(1, nodes):
            started.append(services.start_ray_worker(address, work, i, cpus=1, env=node_env))
        settings = SearchSettings(
            name=f"throughput-{nodes}node-{time.strftime('%H%M%S')}", model=args.model, task=args.task, space=args.space,
            num_samples=args.trials, max_concurrent_trials=2, cpus_per_trial=1, sampler="random", seed=args.seed,
            scheduler="fifo",  # trials of one length, so that trials per hour compare node counts
            budget=TrainBudget(train_examples=args.train_examples, eval_examples=args.eval_examples, seed=args.seed),
            data_dir=str(Path(args.data_dir).resolve()), workdir=str(work / "runs"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}", ray_address=address)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = run_search(settings, show_progress=False)
        wall = time.perf_counter() - t0
    finally:
        services.stop_all(started)
    done = [r for r in result.trials if r["status"] == "COMPLETE"]
    work_s = [r["train_seconds"] + r["eval_seconds"] for r in done]
    return {"nodes": nodes, "cpus": nodes, "trials": len(done), "wall_s": round(wall, 1),
            "trials_per_hour": round(len(done) / wall * 3600, 1),
            "mean_train_eval_s": round(statistics.mean(work_s), 1),
            # What a trial costs beyond training and evaluation: process start, imports, data, model load.
            "mean_overhead_s": round(wall * nodes / len(done) - statistics.mean(work_s), 1),
            "distinct_nodes": len({r.get("node_id") for r in done}),
            "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--space", default="lora")
    parser.add_argument("--train-examples", type=int, default=128)
    parser.add_argument("--eval-examples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default="benchmarks/results/cluster_throughput.csv")
    parser.add_argument("--tracking-uri", default="sqlite:///benchmarks/results/mlflow.db")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="autopeft-bench-") as tmp:
        for nodes in (1, 2):
            work = Path(tmp) / f"{nodes}node"
            work.mkdir()
            rows.append(run_once(nodes, args, work))
            print(rows[-1], flush=True)
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("autopeft-benchmarks")
    with mlflow.start_run(run_name="cluster_throughput"):
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("out", "tracking_uri")})
        for r in rows:
            mlflow.log_metrics({f"{k}_{r['nodes']}node": v for k, v in r.items() if k != "nodes"})
        mlflow.log_metric("ratio_2node_over_1node", ratio)
        mlflow.log_artifact(str(out))

    print("\n| nodes (1 CPU each) | trials | wall s | trials/hour | train+eval s/trial | overhead s/trial |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['trials']} | {r['wall_s']} | {r['trials_per_hour']} | "
              f"{r['mean_train_eval_s']} | {r['mean_overhead_s']} |")
    print(f"\nratio 2 nodes / 1 node: {ratio:.2f} (CSV {out}, MLflow {args.tracking_uri})")


if __name__ == "__main__":
    main()
