"""Where a search runs: an embedded Ray instance, or a running cluster joined by address.

Fails in seconds with one line when a cluster cannot be reached (Ray itself retries for minutes),
and turns on Ray's token authentication for clients of a ``ray start --head`` cluster.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from nbtl.errors import NbtlError


class SearchError(NbtlError):
    """The search cannot start (cluster unreachable, storage not writable, nothing to resume)."""


def _quiet_ray() -> None:
    """Keep Ray Tune's console to our progress lines: no experiment-sync warnings for small
    searches, no per-checkpoint log lines from the workers."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 the legacy reporter prints nothing
    for name in ("ray.tune", "ray.train", "ray.air", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def cluster_address(address: str | None) -> str | None:
    """``address``, else ``$RAY_ADDRESS`` (set for the driver of a ``ray job submit``), else ``None``
    (embedded Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None) -> str:
    """Embedded Ray by default; ``address`` (or ``$RAY_ADDRESS``) joins a running cluster
    (``ray start --head``, a Ray job's cluster).

    Returns the GCS address of the Ray instance the search runs on.
    """
    import ray

    _quiet_ray()
    address = cluster_address(address)
    if not ray.is_initialized():
        if not address:
            # address="local": always a fresh embedded instance, never a stale `ray start` found in /tmp/ray.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            _join_cluster(address)
    return ray.get_runtime_context().gcs_address


def use_token_auth(address: str | None) -> None:
    """Turn on Ray's token authentication for a client joining ``address`` when a token is at hand.

    A head started with ``ray start --head`` (Ray >= 2.52) requires it. Ray reads ``RAY_AUTH_MODE``
    when it is imported, so this runs before the first ``import ray``.
    """
    address = cluster_address(address)
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if address and "RAY_AUTH_MODE" not in os.environ and (token.exists() or os.environ.get("RAY_AUTH_TOKEN")):
        os.environ["RAY_AUTH_MODE"] = "token"


def _resolve_address(address: str) -> str:
    """``auto`` → the address in ``$RAY_ADDRESS`` or of the last ``ray start`` on this machine."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip():
        return current.read_text().strip()
    raise SearchError("--address auto: no running Ray cluster found on this machine; start one with "
                      "`ray start --head` or give its address, e.g. --address 127.0.0.1:6379")


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address``: Ray itself retries for minutes."""
    target = _resolve_address(address)
    host_port = target.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise SearchError(f"--address {address}: nothing answers at {host}:{port} ({error.strerror or error}); "
                          "start the head with `ray start --head --port PORT` or fix the address") from None


def _join_cluster(address: str) -> None:
    import ray

    _probe(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as error:  # ConnectionError, RuntimeError, auth errors: all mean "cannot join"
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SearchError(
            f"--address {address}: cannot join the Ray cluster ({detail}); check that the head runs "
            "(`ray status --address ADDR`) and, for a head with token authentication, that RAY_AUTH_MODE=token "
            "and the token (~/.ray/auth_token or RAY_AUTH_TOKEN) are set"
        ) from None
