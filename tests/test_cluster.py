"""A search on a real two-node Ray cluster on loopback, with the study in PostgreSQL and MLflow
behind a tracking server, driven through the CLI by a driver that holds no data.

Services: ``ray start --head`` and ``ray start --address`` (one CPU each), a PostgreSQL server in a
temp data dir, ``mlflow server`` with a SQLite backend and proxied artifacts. All are stopped by
PID (see ``local_services``). Skipped where PostgreSQL is not installed, except in CI
(AUTOPEFT_REQUIRE_CLUSTER_SERVICES=1), where that is a failure.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import local_services as services

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

NAME = "cluster-search"
TRIALS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_dir):
    if services.postgres_bin() is None:
        message = ("PostgreSQL is not installed (apt-get install -y postgresql); the cluster test needs its "
                   "initdb and postgres binaries")
        if os.environ.get(services.REQUIRE_ENV):
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("cluster")
    t0 = time.monotonic()
    started: list[services.Service] = []
    # The mlflow server takes the longest to answer (10-40 s here): it starts while the rest does.
    # SQLite behind it: PostgreSQL works the same (the README recipe) but its MLflow schema
    # migrations cost ~40 s more on this machine.
    pool = ThreadPoolExecutor(1)
    server = pool.submit(services.start_mlflow_server, f"sqlite:///{work / 'mlflow.db'}", work / "artifacts", work)
    try:
        pg, pg_url = services.start_postgres(work, databases=("optuna",))
        started.append(pg)
        # Only the nodes know where the data is: the driver below has no AUTOPEFT_DATA_DIR.
        node_env = {"AUTOPEFT_DATA_DIR": str(data_dir)}
        # The head declares a silent node dead after 3 missed health checks 1 s apart (Ray's
        # default: 5 checks 3 s apart), so the worker-death test below waits seconds, not half a minute.
        head_env = {**node_env, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        head, address = services.start_ray_head(work, cpus=1, env=head_env)
        started.append(head)
        worker = services.start_ray_worker(address, work, 1, cpus=1, env=node_env)
        started.append(worker)
        mlflow_server, tracking_uri = server.result()
        started.insert(1, mlflow_server)  # stop order (reversed): worker, head, mlflow server, PostgreSQL
        print(f"\nservices up in {time.monotonic() - t0:.0f} s")
        yield {"work": work, "address": address, "storage": f"{pg_url}/optuna", "tracking_uri": tracking_uri,
               "worker": worker}
    finally:
        try:
            mlflow_server = server.result()[0]  # waits if it is still starting
            if mlflow_server not in started:
                started.append(mlflow_server)
        except Exception:
            pass  # it did not start; start_mlflow_server stopped what it began
        pool.shutdown()
        services.stop_all(started)


def _search_cmd(cluster, tiny_bert, name: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autopeft.cli", "search", "--name", name, "--model", tiny_bert, "--task", "sst2",
            "--space", "hybrid", "--num-samples", str(trials), "--max-concurrent-trials", "2", "--cpus-per-trial", "1",
            "--eval-examples", "32", "--batch-size", "16", "--seed", "0", "--scheduler", "fifo",
            "--ray-address", cluster["address"], "--storage", cluster["storage"],
            "--tracking-uri", cluster["tracking_uri"], "--workdir", str(cluster["work"] / "runs"), *extra]


def _driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOPEFT_DATA_DIR", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(services.ray_env())
    return env


@pytest.fixture(scope="module")
def finished(cluster, tiny_bert):
    cmd = _search_cmd(cluster, tiny_bert, NAME, TRIALS, "--train-examples", "32")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_driver_env(), cwd=cluster["work"], timeout=300)
    assert proc.returncode == 0, f"search failed:\n{proc.stdout}\n{proc.stderr}"
    print(f"\n4-trial cluster search: {time.monotonic() - t0:.0f} s (CLI process, incl. imports and Ray connect)")
    return proc, time.monotonic() - t0


def _node_ids(address: str) -> set[str]:
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR');"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **services.ray_env()})
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_driver_without_data_defers_to_workers(finished):
    proc, _ = finished
    assert "the data was not checked here" in proc.stderr


def test_trials_ran_on_both_nodes_and_are_tracked(cluster, finished):
    from mlflow.tracking import MlflowClient

    from autopeft.schema import KIND_TAG, PARETO_CSV, PARETO_PNG, SEARCH_TAG

    client = MlflowClient(cluster["tracking_uri"])
    exp = client.get_experiment_by_name("autopeft")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = '{NAME}'")
    parents = [r for r in runs if r.data.tags[KIND_TAG] == "search"]
    trials = [r for r in runs if r.data.tags[KIND_TAG] == "trial"]
    assert len(parents) == 1 and len(trials) == TRIALS
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["autopeft.device"] == "cpu"
        # RSS on CPU; a trial in a worker process an earlier trial used says so (workers are reused)
        assert run.data.tags["autopeft.memory_measure"] in ("cpu_rss_above_model", "cpu_rss_above_model_reused_process")
        assert {"metric", "trainable_params", "peak_memory_mb"} <= set(run.data.metrics)
    nodes = {run.data.tags["autopeft.node_id"] for run in trials}
    assert nodes == _node_ids(cluster["address"]), "trials ran on both nodes of the cluster"

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {PARETO_CSV, PARETO_PNG} <= artifacts
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(parent.info.run_id, PARETO_CSV)).read())))
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in trials}
    assert any(r["pareto"] == "True" for r in rows)


def test_every_trial_is_in_the_postgres_study(cluster, finished):
    import optuna
    from mlflow.tracking import MlflowClient

    from autopeft.schema import KIND_TAG, SEARCH_TAG

    study = optuna.load_study(study_name=NAME, storage=cluster["storage"])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS
    client = MlflowClient(cluster["tracking_uri"])
    exp = client.get_experiment_by_name("autopeft")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{SEARCH_TAG}` = '{NAME}' and tags.`{KIND_TAG}` = 'trial'")
    tracked = sorted((r.data.metrics["metric"], r.data.metrics["trainable_params"]) for r in runs)
    assert sorted((t.values[0], t.values[1]) for t in complete) == tracked


def test_drivers_racing_on_the_postgres_study_ask_exactly_the_target(cluster):
    from test_liveness import TARGET, race_to_the_target

    from autopeft.study import counted

    trials = race_to_the_target(cluster["storage"], "race-to-the-target")  # the advisory lock
    assert len(counted(trials)) == TARGET == len(trials)


# ---------------------------------------------------------------------------- a worker node dies
# Last in this module: it kills the worker node that the tests above count on.

LOST_NAME = "cluster-node-death"
LOST_TRIALS = 3


def _trial_processes(node: services.Service) -> list:
    """The Tune trial actors running on ``node`` (Ray titles them ray::ImplicitFunc...)."""
    import psutil

    found = []
    for proc in psutil.Process(node.proc.pid).children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def _kill_node(node: services.Service) -> int:
    """SIGKILL every process of one Ray node, by PID: its `ray start --block`, raylet, agents, workers."""
    import psutil

    root = psutil.Process(node.proc.pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    node.proc.wait(30)
    return len(procs)


def test_a_dead_worker_node_loses_one_trial_which_is_asked_again(cluster, tiny_bert):
    import optuna
    from mlflow.tracking import MlflowClient

    from autopeft import study as studies
    from autopeft.schema import ASKED_AGAIN_TAG, FAILURE_TAG, KIND_TAG, NODE_LOST, SEARCH_TAG

    # Trials long enough (3 epochs of 512 examples) that one is surely mid-run when its node dies.
    cmd = _search_cmd(cluster, tiny_bert, LOST_NAME, LOST_TRIALS, "--train-examples", "512", "--epochs", "3",
                      "--retry-lost-trials", "1")
    t0 = time.monotonic()
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_driver_env(),
                              cwd=cluster["work"])
    try:
        deadline = time.monotonic() + 180
        while not _trial_processes(cluster["worker"]):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial started on the worker node"
            time.sleep(0.2)
        time.sleep(2)  # inside the trial: imports and training
        killed = _kill_node(cluster["worker"])
        print(f"\nworker node killed ({killed} processes) {time.monotonic() - t0:.0f} s into the search")
        out, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out
    print(f"search with a dead worker node: {time.monotonic() - t0:.0f} s\n{out}")
    assert "failed (node_lost)" in out, out

    trials = optuna.load_study(study_name=LOST_NAME, storage=cluster["storage"]).trials
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    lost = [t for t in trials if t.user_attrs.get(studies.FAILURE_ATTR) == NODE_LOST]
    assert len(lost) == 1 and lost[0].state == optuna.trial.TrialState.FAIL
    assert lost[0].user_attrs[studies.ASKED_AGAIN_ATTR] is True
    retry = [t for t in trials if t.number > lost[0].number and t.params == lost[0].params]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE, "asked again, on a live node"
    assert retry[0].user_attrs[studies.RETRIES_ATTR] == 1
    assert len(studies.counted(trials)) == LOST_TRIALS and lost[0] not in studies.counted(trials)

    client = MlflowClient(cluster["tracking_uri"])
    exp = client.get_experiment_by_name("autopeft")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = '{LOST_NAME}'")
    parent = [r for r in runs if r.data.tags[KIND_TAG] == "search"]
    runs = {int(r.data.tags["autopeft.trial_number"]): r for r in runs if r.data.tags[KIND_TAG] == "trial"}
    assert parent[0].info.status == "FINISHED" and parent[0].data.metrics["trials_lost"] == 1
    assert set(runs) == {t.number for t in trials}, "one MLflow run per Optuna trial"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    lost_run = runs[lost[0].number]
    assert lost_run.info.status == "FAILED" and lost_run.data.tags[FAILURE_TAG] == NODE_LOST
    assert lost_run.data.tags[ASKED_AGAIN_TAG] == "true"
    assert "node running this trial died" in lost_run.data.tags["autopeft.error"]
    assert runs[retry[0].number].data.tags["autopeft.node_id"] in _node_ids(cluster["address"]), "ran on the head"
