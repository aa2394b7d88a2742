"""``autopeft dashboard``: the MLflow UI on a search's tracking store, on loopback, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Callable

from autopeft.errors import AutopeftError

HEALTH_TIMEOUT_S = 90.0  # the server answers /health after ~9 s on a 2-core machine


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


def experiment_url(tracking_uri: str, base: str, experiment: str = "autopeft") -> str:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    return f"{base}/#/experiments/{exp.experiment_id}" if exp else base


def serve(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 0,
          say: Callable[[str], None] = print) -> None:
    from rich.console import Console

    from autopeft.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    proc = start_server(uri, host, port)
    # A SIGTERM (a service manager, `timeout`) stops the server too, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with Console(stderr=True).status(f"starting the MLflow UI on {uri}"):
            wait_healthy(proc, base)
        say(f"MLflow UI: {experiment_url(uri, base)}  (store {uri}; Ctrl-C stops it)")
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
