"""``autopeft dashboard``: the MLflow UI on a search's tracking store, on loopback, until Ctrl-C.

It opens where a user looks: the experiment is marked as a model-training one (else MLflow 3 opens
on its GenAI traces overview), and the printed URL opens a saved view of the runs table (MLflow's
shared view state, an experiment tag) that lists the search's trials, best metric first, with the
objective columns shown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Callable

from autopeft.errors import AutopeftError

HEALTH_TIMEOUT_S = 90.0  # the server answers /health after ~9 s on a 2-core machine
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + key: a runs-table view the UI opens from ?viewStateShareKey=key
# Columns of the trials view, after the run name: the objectives and the configuration.
TRIAL_COLUMNS = ("metrics.`metric`", "metrics.`trainable_params`", "metrics.`peak_memory_mb`",
                 "tags.`autopeft.peft`")


class DashboardError(AutopeftError):
    """The MLflow UI could not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(tracking_uri: str, host: str, port: int) -> subprocess.Popen:
    # Its own session, so stopping it reaches the server's worker processes too.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1"})


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
            raise DashboardError(f"the MLflow server exited (code {proc.returncode}): {' | '.join(err[-3:])}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise DashboardError(f"the MLflow server did not answer {url}/health within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def experiment_url(tracking_uri: str, base: str, experiment: str = "autopeft", search: str | None = None) -> str:
    """Where the UI should open: the trials view of ``search`` (the latest search by default).

    Marks the experiment as a model-training one and saves the view on it; without any search there
    it opens the experiment's runs, and without the experiment, MLflow's home page.
    """
    from mlflow.tracking import MlflowClient

    from autopeft.results import SearchNotFound, load_search
    from autopeft.schema import EXPERIMENT_TAGS, KIND_TAG, SEARCH_TAG

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return base
    for key, value in EXPERIMENT_TAGS.items():  # stores written before the tag was set at creation
        client.set_experiment_tag(exp.experiment_id, key, value)
    # workflowType: the side bar's model-training menu (it remembers GenAI's from an earlier visit otherwise).
    runs = f"{base}/#/experiments/{exp.experiment_id}/runs"
    workflow = "workflowType=machine_learning"
    try:
        record = load_search(search, tracking_uri, experiment)
    except SearchNotFound:
        if search:
            raise
        return f"{runs}?{workflow}"
    key = "autopeft-" + re.sub(r"[^A-Za-z0-9_-]", "-", record.name)
    view = {"searchFilter": f"tags.`{SEARCH_TAG}` = '{record.name}' and tags.`{KIND_TAG}` = 'trial'",
            "orderByKey": "metrics.`metric`", "orderByAsc": False, "selectedColumns": list(TRIAL_COLUMNS)}
    client.set_experiment_tag(exp.experiment_id, VIEW_TAG_PREFIX + key, json.dumps(view))
    return f"{runs}?viewStateShareKey={key}&{workflow}"


def serve(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 0,
          say: Callable[[str], None] = print, search: str | None = None, experiment: str = "autopeft") -> None:
    from rich.console import Console

    from autopeft.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    url = experiment_url(uri, base, experiment, search)  # a missing search fails here, before the server starts
    proc = start_server(uri, host, port)
    # A SIGTERM (a service manager, `timeout`) stops the server too, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with Console(stderr=True).status(f"starting the MLflow UI on {uri}"):
            wait_healthy(proc, base)
        say(f"MLflow UI: {url}  (store {uri}; Ctrl-C stops it)")
        while proc.poll() is None:
            time.sleep(0.5)
        raise DashboardError(f"the MLflow server stopped by itself (code {proc.returncode})")
    except KeyboardInterrupt:
        say("stopping the MLflow UI")
    finally:
        stop_server(proc)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
