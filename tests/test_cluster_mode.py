"""What changes when a search joins a cluster, checked without starting one (the real cluster is
``test_cluster.py``)."""

from __future__ import annotations

import socket

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autopeft.cli import app
from autopeft.cluster import check_ray_address, check_resources, on_cluster, trial_data_dir
from autopeft.errors import ConfigError, DataError
from autopeft.search import SearchSettings, prepare


def test_on_cluster_follows_the_flag_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not on_cluster(None) and not on_cluster("local")
    assert on_cluster("10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert on_cluster(None)


def test_ray_client_addresses_are_refused_with_the_alternative():
    with pytest.raises(ConfigError, match="--num-cpus 0"):
        check_ray_address("ray://head:10001")
    with pytest.raises(ConfigError, match="no Ray cluster answers"):  # well-formed, but nobody there
        check_ray_address("127.0.0.1:9")
    check_ray_address(None)
    check_ray_address("auto")


def test_cli_refuses_ray_client_before_ray_starts():
    result = CliRunner().invoke(app, ["search", "--ray-address", "ray://head:10001"])
    assert result.exit_code == 2
    assert "Ray Client" in result.output


def test_trial_data_dir_single_machine_and_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    # Single machine: what the driver resolved, absolute (trials run in their own working dirs).
    assert trial_data_dir("data", Path("data"), None) == str(tmp_path / "data")
    assert trial_data_dir(None, None, None) is None
    # Cluster: only an explicit --data-dir travels; otherwise each worker's AUTOPEFT_DATA_DIR decides.
    assert trial_data_dir(None, Path("data"), "head:6379") is None
    assert trial_data_dir("/srv/data", None, "head:6379") == "/srv/data"


def test_driver_without_data_defers_to_the_workers_only_on_a_cluster(tiny_bert, monkeypatch):
    monkeypatch.delenv("AUTOPEFT_DATA_DIR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = SearchSettings(name="x", model=tiny_bert, task="sst2", space="lora")
    with pytest.raises(DataError):
        prepare(settings)
    with socket.socket() as listener:  # stands in for the head's port: prepare() probes it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        prepared = prepare(replace(settings, ray_address=f"127.0.0.1:{listener.getsockname()[1]}"))
    assert prepared.context.data_dir is None
    assert prepared.notes and "workers resolve it" in prepared.notes[0]
    assert prepared.context.task == "sst2"  # a shipped task travels by name, not by this checkout's path


def test_user_task_travels_by_absolute_path(tiny_bert, tiny_task):
    prepared = prepare(SearchSettings(name="x", model=tiny_bert, task=tiny_task, space="lora"))
    assert prepared.context.task == str(Path(tiny_task).resolve())
    assert not prepared.notes


def test_local_model_folder_travels_by_absolute_path(tiny_bert, tiny_task, monkeypatch):
    folder = Path(tiny_bert)
    monkeypatch.chdir(folder.parent)
    prepared = prepare(SearchSettings(name="x", model=folder.name, task=tiny_task, space="lora"))
    assert prepared.context.model == str(folder)
    assert prepare(SearchSettings(name="x", task=tiny_task, space="lora")).context.model == "all-MiniLM-L6-v2"


def test_a_trial_no_node_can_hold_is_refused(monkeypatch):
    import ray

    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.delenv("AUTOPEFT_SKIP_RESOURCE_CHECK", raising=False)
    check_resources(4, 0)
    check_resources(2, 1)
    with pytest.raises(ConfigError, match="4 CPU/0 GPU, 2 CPU/1 GPU"):
        check_resources(4, 1)  # enough CPUs and a GPU exist, but not on one node
    with pytest.raises(ConfigError, match="--gpus-per-trial"):
        check_resources(1, 2)
    monkeypatch.setenv("AUTOPEFT_SKIP_RESOURCE_CHECK", "1")
    check_resources(1, 2)


def test_trial_code_never_loads_the_stores():
    """Workers need no database or tracking server: the trial side imports neither client."""
    import subprocess
    import sys

    code = ("import sys, autopeft.trial, autopeft.build, autopeft.train, autopeft.tasks; from ray import tune; "
            "print(sorted(m for m in ('mlflow', 'optuna', 'sqlalchemy', 'psycopg2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_local_trial_workers_run_at_normal_priority(monkeypatch):
    # Ray's default worker niceness (15) starves trials beside any busy process at normal priority.
    import os

    import ray

    from autopeft.cluster import WORKER_NICENESS_ENV, connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(WORKER_NICENESS_ENV, raising=False)
    if ray.is_initialized():
        ray.shutdown()
    connect(None)
    try:
        niceness = ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote(), timeout=120)
    finally:
        ray.shutdown()
    assert niceness == os.nice(0)
