"""Real services on loopback for the cluster test and benchmark: Ray nodes, PostgreSQL, mlflow server.

Every service is a child process started here and stopped by its PID: the Ray nodes run
``ray start --block`` (its Ray processes share its fate, so SIGTERM to it stops that node and
nothing else; ``ray stop`` would stop every Ray instance on the machine, including other users').
The head gets its own ``--temp-dir``, so ``ray.init()`` elsewhere on the machine, which looks for the
last cluster in /tmp/ray, never attaches to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # ray and mlflow entry points of this environment
REQUIRE_ENV = "AUTOPEFT_REQUIRE_CLUSTER_SERVICES"  # CI sets it: missing PostgreSQL is a failure there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path
    stop_signal: int = signal.SIGTERM
    cleanup: list[Path] = field(default_factory=list)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


def _start(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, **kw) -> Service:
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, **kw)
    out.close()
    return Service(name, proc, log)


def _wait(service: Service, ready, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.5)
    service.stop()
    raise RuntimeError(f"{service.name} not ready after {timeout:.0f} s:\n{service.log_tail()}")


# ---------------------------------------------------------------------------- Ray


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Ray node: its workers import this checkout's autopeft."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # Workers at the driver's priority, as the README tells cluster users: at Ray's default nice 15
    # any busy process beside the test starves the trials (seen: no trial done in 12 minutes).
    return {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0", **(extra or {})}


def _ray_started(service: Service) -> bool:
    # `ray start` prints this once its node is registered with the cluster's GCS.
    return "Ray runtime started" in service.log.read_text(errors="replace")


def start_ray_head(workdir: Path, cpus: int = 1, env: dict[str, str] | None = None) -> tuple[Service, str]:
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="apr-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--num-cpus", str(cpus), "--num-gpus", "0", "--include-dashboard=false",
           "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(temp), "--disable-usage-stats"]
    head = _start("ray head", cmd, workdir / "ray-head.log", ray_env(env))
    head.cleanup.append(temp)
    address = f"127.0.0.1:{port}"
    _wait(head, lambda: _ray_started(head), 90)
    return head, address


def start_ray_worker(address: str, workdir: Path, index: int, cpus: int = 1,
                     env: dict[str, str] | None = None) -> Service:
    cmd = [str(BIN / "ray"), "start", "--block", "--address", address, "--node-ip-address", "127.0.0.1",
           "--num-cpus", str(cpus), "--num-gpus", "0", "--dashboard-agent-listen-port", str(free_port()),
           "--disable-usage-stats"]
    worker = _start(f"ray worker {index}", cmd, workdir / f"ray-worker-{index}.log", ray_env(env))
    _wait(worker, lambda: _ray_started(worker), 90)
    return worker


# ---------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<v>/bin), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def start_postgres(workdir: Path, databases: tuple[str, ...] = ("optuna",)) -> tuple[Service, str]:
    """A throwaway server on a loopback port, trust auth, data in a fresh temp dir.

    Returns the service and the base URL ``postgresql+psycopg2://autopeft@127.0.0.1:PORT``.
    PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user that the
    Debian package creates, and owns its data dir (made outside pytest's root-only tmp tree).
    """
    import psycopg2

    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) not found")
    data = Path(tempfile.mkdtemp(prefix="autopeft-pg-", dir="/tmp"))
    as_user: dict = {}
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data / "db"), "-U", "autopeft", "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, cwd=data, **as_user)
    if init.returncode:
        shutil.rmtree(data, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stdout}\n{init.stderr}")
    port = free_port()
    log = workdir / "postgres.log"
    if as_user:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    cmd = [str(bindir / "postgres"), "-D", str(data / "db"), "-p", str(port), "-h", "127.0.0.1",
           "-k", str(data), "-c", "fsync=off", "-c", "max_connections=50"]
    pg = _start("postgres", cmd, log, cwd=data, **as_user)
    pg.stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, stop now
    pg.cleanup.append(data)

    def connect(db: str = "postgres"):
        return psycopg2.connect(host="127.0.0.1", port=port, user="autopeft", dbname=db)

    _wait(pg, lambda: connect().close() is None, 60)
    conn = connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in databases:
            cur.execute(f"CREATE DATABASE {db}")
    conn.close()
    return pg, f"postgresql+psycopg2://autopeft@127.0.0.1:{port}"


# ---------------------------------------------------------------------------- mlflow server


def start_mlflow_server(backend_uri: str, artifacts: Path, workdir: Path) -> tuple[Service, str]:
    """``mlflow server`` with a SQL backend, serving (proxying) artifacts from ``artifacts``."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = _start("mlflow server", cmd, workdir / "mlflow-server.log")
    uri = f"http://127.0.0.1:{port}"
    _wait(server, lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, 120)
    return server, uri


def stop_all(services: list[Service]) -> None:
    for service in reversed(services):  # workers before the head, the server before its database
        service.stop()
