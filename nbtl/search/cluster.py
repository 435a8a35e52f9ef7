"""Where a search runs: an embedded Ray instance, or a running cluster joined by address.

Fails in seconds with one line when a cluster cannot be reached (Ray itself retries for minutes),
and turns on Ray's token authentication for clients of a ``ray start --head`` cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from nbtl.errors import ClusterError, NbtlError
from nbtl.search.reaper import embedded_ray_reaper
from nbtl.tracking.store import check_tracking_uri


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


#: Ray's switch for its single-machine mode (the default on Windows and macOS): every service of the node
#: binds on 127.0.0.1. On Linux Ray binds on all interfaces and turns ``_node_ip_address="127.0.0.1"`` into
#: the machine's address (``ray._private.services.resolve_ip_for_localhost``). Read when ``ray`` is imported.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: The environment Ray starts nbtl's workers in (the job's ``runtime_env``), where this process does not set
#: the same variable itself. ``MALLOC_ARENA_MAX=1``: Ray Tune runs a trial in a thread of its worker, and glibc gives
#: a thread that allocates its own malloc arena, whose heaps keep the freed activation buffers of 224-px steps as
#: holes. Measured on 2 CPUs, at the same images/s: a fine-tune run in a thread after another in the same process,
#: peak anonymous memory 1.95 GB, 1.33 GB with one arena; ``benchmarks/trial_memory.py`` (one epoch, every block
#: trained): 2.10 and 1.99 GB. Read by glibc when the process starts, so it must be set there.
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


def worker_runtime_env() -> dict:
    """The ``runtime_env`` of the Ray job a search or study runs as: :data:`WORKER_ENV`, a value set in this
    process's environment winning."""
    return {"env_vars": {name: os.environ.get(name, value) for name, value in WORKER_ENV.items()}}


def _same_cluster(asked: str, gcs_address: str) -> bool:
    """Whether ``asked`` (``HOST:PORT``, ``auto``, ``ray://HOST:PORT``) names the GCS at ``gcs_address``."""
    if asked.startswith("ray://") or asked == "auto":
        return True  # a Ray Client address or "the local cluster": not comparable with a GCS address, trust it
    host, _, port = asked.rpartition(":")
    ours, _, our_port = gcs_address.rpartition(":")
    if port != our_port:
        return False
    asked_ips, our_ips = _addresses(host), _addresses(ours)
    loopback = {"127.0.0.1", "::1"}
    # 127.0.0.1:PORT names a head on this machine, which Ray reports under the machine's address
    return bool(asked_ips & our_ips) or bool(
        asked_ips & loopback and our_ips & (loopback | _addresses(socket.gethostname()))
    )


def _addresses(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), None)}
    except (OSError, UnicodeError):
        return set()


def init_ray(address: str | None) -> str:
    """Embedded Ray by default, bound on 127.0.0.1 only; ``address`` (or ``$RAY_ADDRESS``) joins a running
    cluster (``ray start --head``, a Ray job's cluster). A Ray already initialised in this process is used
    as it is when it is the one asked for (any, without an address); another one is refused.

    Returns the GCS address of the Ray instance the search runs on.
    """
    address = cluster_address(address)
    if not address and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    import ray

    _quiet_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address and not _same_cluster(address, current):
            raise SearchError(
                f"--address {address}: this process already runs Ray at {current}; run the search in a "
                "fresh process (or call ray.shutdown() first), or give --address " + current
            )
        return current
    if not address:
        # address="local": always a fresh embedded instance, never a stale `ray start` found in /tmp/ray.
        ray.init(
            address="local",
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            runtime_env=worker_runtime_env(),
            # Ray starts a worker per CPU when the first driver connects; Tune's trials never used them (each
            # search started its own and Ray killed those idle ones): a process per CPU started for nothing
            _system_config={"prestart_worker_first_driver": False},
        )
        if not _is_loopback(ray.get_runtime_context().gcs_address):
            logging.getLogger(__name__).warning(
                "the embedded Ray listens on every interface: `ray` was imported before nbtl could keep it on "
                "127.0.0.1 (set %s=0 before importing ray)",
                LOOPBACK_ONLY_ENV,
            )
    else:
        _join_cluster(address)
    return ray.get_runtime_context().gcs_address


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost")


#: Ray's logger for the notice it logs whenever ``ray.init`` starts a local Ray with token authentication on.
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


class _NoTokenNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt
    out" notice: nbtl's embedded Ray listens on loopback with a token, as it should, and every search printed it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@contextmanager
def ray_session(address: str | None) -> Iterator[str]:
    """:func:`init_ray` for the block; a Ray that nbtl started here is shut down when the block ends (also on
    an error or Ctrl-C), one that was already running (in this process or a cluster) is left alone."""
    import importlib

    started = "ray" not in sys.modules or not importlib.import_module("ray").is_initialized()
    with ExitStack() as stack:
        # an embedded Ray's processes are marked, and end with this process however it ends
        mark = stack.enter_context(embedded_ray_reaper()) if started and not cluster_address(address) else {}
        os.environ.update(mark)
        notice = logging.getLogger(_TOKEN_LOGGER)
        quiet = _NoTokenNotice()
        notice.addFilter(quiet)
        try:
            gcs_address = init_ray(address)
        finally:
            notice.removeFilter(quiet)
            for key in mark:
                os.environ.pop(key, None)  # what this process starts later is not Ray's
        try:
            yield gcs_address
        finally:
            if started:
                import ray

                ray.shutdown()


#: ``resources`` keys of a search (``with_resources``) and the Ray resource each one asks of a node.
_RAY_RESOURCE = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def check_services(address: str | None, tracking_uri: str | None) -> str:
    """What every study (a search, a zoo) checks first, in seconds, before any image is decoded or Ray starts: the
    MLflow store and the Ray head at ``address`` (its token authentication turned on where a token is at hand, before
    Ray is imported). Returns the tracking URI checked."""
    uri = check_tracking_uri(tracking_uri)
    check_ray_address(address)
    use_token_auth(address)
    return uri


@contextmanager
def study_ray(address: str | None, resources: dict[str, float]) -> Iterator[str]:
    """The Ray session of a study (embedded, or the cluster at ``address``), refused at once when no node has a
    trial's ``resources``; yields the GCS address. Ray (embedded) is shut down when it ends."""
    with ray_session(address) as gcs_address:
        check_resources(resources)
        yield gcs_address


def check_resources(resources: dict[str, float]) -> None:
    """Refuse, in one line, per-trial ``resources`` that no alive node of the running Ray offers: Ray Tune
    would wait for them forever."""
    import ray

    wanted = {_RAY_RESOURCE.get(k, k): float(v) for k, v in resources.items() if v and float(v) > 0}
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if not wanted or any(all(node.get(k, 0.0) >= v for k, v in wanted.items()) for node in nodes):
        return

    def show(values: dict[str, float]) -> str:
        return ", ".join(f"{values.get(k, 0):g} {k}" for k in wanted)

    largest = max(nodes, key=lambda node: tuple(node.get(k, 0.0) for k in ("GPU", "CPU", *wanted)), default={})
    flags = " / ".join(f"--{k}" for k in resources if k in ("cpu", "gpu") and _RAY_RESOURCE[k] in wanted)
    raise SearchError(
        f"resources per trial {show(wanted)}: no node of this Ray cluster has them "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}, the largest has {show(largest)}); lower "
        f"{flags or 'resources'} (or search.resources in the space), or join a cluster with such a node "
        "(--address)"
    )


def _join_cluster(address: str) -> None:
    import ray

    probe_ray_head(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, runtime_env=worker_runtime_env())
    except Exception as error:  # ConnectionError, RuntimeError, auth errors: all mean "cannot join"
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(
            f"--address {address}: cannot join the Ray cluster ({detail}); check that the head runs "
            "(`ray status --address ADDR`) and, for a head with token authentication, that RAY_AUTH_MODE=token "
            "and the token (~/.ray/auth_token or RAY_AUTH_TOKEN) are set"
        ) from None


# --- the Ray head: checked in seconds before Ray starts --------------------------------------------------


def check_ray_address(address: str | None) -> str | None:
    """Check that ``address`` (else ``$RAY_ADDRESS``; ``auto``: the last ``ray start`` here) is a Ray head
    nbtl can join, in seconds; return the address checked, or ``None`` for an embedded Ray (nothing to check).

    Raises
    ------
    ClusterError
        One line: the address, what answers there (nothing, not Ray, a head that wants a token), what to do.
    """
    address = cluster_address(address)
    if not address:
        return None
    probe_ray_head(address)
    return address


def cluster_address(address: str | None) -> str | None:
    """``address``, else ``$RAY_ADDRESS`` (set for the driver of a ``ray job submit``), else ``None``
    (embedded Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


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
    raise ClusterError(
        "--address auto: no running Ray cluster found on this machine; start one with "
        "`ray start --head` or give its address, e.g. --address 127.0.0.1:6379"
    )


def probe_ray_head(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, unless a Ray head answers at ``address`` (Ray itself retries for
    minutes, and hangs on a port where another service listens).

    A head is a process that answers the GCS call ``NodeInfoGcsService.GetClusterId`` (for ``ray://``, the
    Ray Client server's ``ClusterInfo(PING)``), with the token when the head wants one.
    """
    target = _resolve_address(address)
    client = target.startswith("ray://")
    host_port = target.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        why = f"no answer within {timeout:.0f}s" if isinstance(error, TimeoutError) else error.strerror or error
        raise ClusterError(
            f"--address {address}: nothing answers at {host}:{port} ({why}); "
            "start the head with `ray start --head --port PORT` or fix the address"
        ) from None
    use_token_auth(address)  # before the first `import ray`, which reads RAY_AUTH_MODE
    import grpc

    try:
        _ask_ray(host_port, client, timeout)
    except grpc.RpcError as error:
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise ClusterError(
                f"--address {address}: the Ray head refuses nbtl's token (or none was sent); copy the head's token "
                "(`ray get-auth-token` on the head) to ~/.ray/auth_token or RAY_AUTH_TOKEN and set RAY_AUTH_MODE=token"
            ) from None
        if client:
            what, example = "a Ray Client server", "ray://127.0.0.1:10001"
        else:
            what, example = "a Ray head (the GCS port of `ray start --head`, 6379 by default)", "127.0.0.1:6379"
        reason = (
            f"no gRPC answer within {timeout:.0f}s"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED
            else f"gRPC {code.name if code is not None else type(error).__name__}"
        )
        raise ClusterError(
            f"--address {address}: {host}:{port} answers, but not as {what} ({reason}); give the "
            f"head's address, e.g. --address {example}"
        ) from None


def _ask_ray(host_port: str, client: bool, timeout: float) -> None:
    """One short gRPC call that only a Ray head (or Ray Client server) answers; raises ``grpc.RpcError``."""
    from ray._private.grpc_utils import init_grpc_channel

    channel = init_grpc_channel(host_port)
    try:
        if client:
            from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

            request = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
            ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(request, timeout=timeout)
        else:
            from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout
            )
    finally:
        channel.close()
