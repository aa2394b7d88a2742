"""Running a search on an existing Ray cluster: what changes when trials run on other machines.

autopeft only connects to a cluster (``ray start`` or Ray's cluster launcher make it). The driver
(the machine running ``autopeft search``) keeps every store write: Optuna's study and MLflow runs
are written by the searcher and the Tune callbacks, which run in the driver process; trials only
``tune.report`` their results. So worker nodes need neither the database nor the tracking server,
only the code, the base model and the task data.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from autopeft.errors import ConfigError

RAY_ADDRESS_ENV = "RAY_ADDRESS"


def on_cluster(ray_address: str | None) -> bool:
    """Whether trials may run on machines other than the driver's (``ray.init`` also reads RAY_ADDRESS)."""
    address = ray_address or os.environ.get(RAY_ADDRESS_ENV)
    return bool(address) and address != "local"


def check_ray_address(ray_address: str | None, timeout_s: float = 5.0) -> None:
    """An address autopeft can use, with something listening there (Ray itself waits long)."""
    if not ray_address or ray_address in ("auto", "local"):
        return
    if ray_address.startswith("ray://"):
        # With Ray Client, Tune moves the whole search loop (searcher, callbacks) into an actor on
        # the head node: the records, the Pareto artifact and the progress bar would not come back.
        raise ConfigError(
            f"--ray-address {ray_address}: Ray Client (ray://) addresses are not supported. Give the "
            f"cluster's GCS address (HEAD_IP:6379) and run autopeft on a cluster node, or join this "
            f"machine to the cluster first without resources: ray start --address HEAD_IP:6379 --num-cpus 0 --num-gpus 0"
        )
    host, _, port = ray_address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"invalid Ray address {ray_address!r}: expected host:port (as printed by "
                          f"`ray start --head`) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {ray_address!r} ({exc}); start one with `ray start --head` "
                          f"or leave --ray-address out to run locally") from None


def trial_data_dir(data_dir: str | None, resolved: Path | None, ray_address: str | None) -> str | None:
    """The data folder the trials are told to use.

    Single machine: the folder the driver resolved (flag or AUTOPEFT_DATA_DIR), made absolute
    because Ray runs each trial in its own working directory. On a cluster the driver may hold no
    data: only an explicit ``--data-dir`` is passed on (absolute, and it must exist at that path on
    every node); otherwise each worker resolves its own AUTOPEFT_DATA_DIR (the environment of its
    ``ray start``), else the Hugging Face Hub.
    """
    if not on_cluster(ray_address):
        return str(resolved.resolve()) if resolved is not None else None
    if not data_dir:
        return None
    return str(Path(data_dir).expanduser().absolute())


WORKER_NICENESS_ENV = "RAY_worker_niceness"


def connect(ray_address: str | None) -> None:
    """``ray.init`` for a search; a cluster that cannot be reached is a user error."""
    import ray

    # Ray starts its workers at nice 15 (raylet's worker_niceness), so on a machine doing anything
    # else at normal priority the trials get a few percent of a core: measured here, a trial that
    # takes seconds alone had not finished importing torch after 50 s beside two busy processes.
    # Trials are the work, so they run at the driver's priority; the environment (a user's own
    # RAY_worker_niceness) still wins. Reaches a Ray this call starts; a cluster's own nodes take
    # it from the environment of their `ray start`.
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    try:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
    except ConnectionError as exc:
        where = ray_address or os.environ.get(RAY_ADDRESS_ENV) or "the local Ray instance"
        raise ConfigError(
            f"cannot connect to the Ray cluster at {where}: {exc}. Start it with `ray start --head` "
            f"(and `ray start --address HEAD_IP:PORT` on each worker), or leave out --ray-address/"
            f"{RAY_ADDRESS_ENV} to start a local one."
        ) from None


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fail now if no node of the connected cluster can ever hold one trial.

    Ray Tune would otherwise wait forever (it only logs a warning), e.g. for ``--gpus-per-trial 1``
    on a cluster without GPUs. Clusters that add nodes on demand (autoscaling) may hold none yet:
    AUTOPEFT_SKIP_RESOURCE_CHECK=1 skips the check.
    """
    import ray

    if os.environ.get("AUTOPEFT_SKIP_RESOURCE_CHECK"):
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "no alive node"
    raise ConfigError(
        f"no node of the Ray cluster can run a trial: each asks for {cpus_per_trial:g} CPU and "
        f"{gpus_per_trial:g} GPU (--cpus-per-trial, --gpus-per-trial); the nodes have {have}. Lower the "
        f"request or add nodes (set AUTOPEFT_SKIP_RESOURCE_CHECK=1 if the cluster autoscales)."
    )


def dead_nodes() -> set[str]:
    """The ids of the connected cluster's nodes that Ray knows dead."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}


# Ray declares a silent node dead after its health checks fail: 5 checks 3 s apart by default
# (health_check_failure_threshold, health_check_period_ms), so about 15 s after it went quiet.
NODE_DEATH_WAIT_S = 20.0


def lost_with_node(dead_before: set[str], wait_s: float = NODE_DEATH_WAIT_S) -> bool:
    """For a trial whose process Ray can no longer reach: did a node die since ``dead_before``?

    A worker process that dies alone is reported by its node at once; a node that dies is only
    declared dead by the head after its health checks fail. So wait up to ``wait_s`` for a node
    death before calling it the worker's alone (this pauses the driver's loop, the running trials
    go on).
    """
    import time

    deadline = time.monotonic() + wait_s
    while True:
        if dead_nodes() - dead_before:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
