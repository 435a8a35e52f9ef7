"""Checks of the services a command needs, made in seconds before any data is decoded or Ray starts.

Without them a wrong ``--tracking-uri`` surfaces minutes later (MLflow retries a closed port for
about four minutes) as a long traceback after Ray has started, and a wrong ``--address`` hangs
while Ray retries its GCS. Each check fails with one line (:class:`nbtl.errors.ServiceError`)
naming the URI or address, what is wrong and what to do.

``check_tracking_uri`` speaks to the store only as MLflow's own client would (its credentials from
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` and TLS settings); ``check_ray_address`` asks
the Ray head's GCS for its cluster id (:func:`probe_ray_head`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from nbtl.errors import ClusterError, TrackingStoreError

#: Seconds a check waits for a service to answer.
TIMEOUT = 5.0
#: The MLflow REST call that tells an MLflow tracking server from any other HTTP server: it answers
#: JSON, ``{"experiment": ...}`` or ``{"error_code": "RESOURCE_DOES_NOT_EXIST", ...}``.
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/get-by-name"
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\x00"
START_SERVER = "start one with `mlflow server --host 127.0.0.1 --port 5000`"


def check_tracking_uri(uri: str | None) -> str:
    """Check that ``uri`` (resolved as :func:`nbtl.tracking.resolve_tracking_uri` does) names an MLflow
    tracking store nbtl can write to, and return the resolved URI.

    ``http(s)``: an MLflow server answers MLflow's REST API within :data:`TIMEOUT` seconds, and accepts
    the credentials in the environment. ``sqlite``/``file``: the file or folder exists and can be written,
    or can be created. ``postgresql``/``mysql``/``mssql``: the driver is installed and the host answers.
    ``databricks`` and schemes of installed MLflow plugins are passed on unchecked.

    Raises
    ------
    TrackingStoreError
        One line: the URI, what is wrong, and what to do.
    """
    from nbtl.tracking import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri)
    scheme = urlsplit(resolved).scheme.lower()
    engine = scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        _check_server(resolved)
    elif scheme == "sqlite":
        _check_sqlite(resolved)
    elif scheme == "file":
        _check_file_store(resolved)
    elif engine in DATABASE_PORTS:
        _check_database(resolved, engine)
    elif scheme not in ("databricks", "databricks-uc", "uc") and scheme not in _plugin_schemes():
        raise TrackingStoreError(
            f"--tracking-uri {resolved}: unknown scheme {scheme + '://' if scheme else '(none)'}; give an MLflow "
            "server (http://HOST:PORT), a SQLite file (sqlite:///mlflow.db) or a database URL (postgresql://...)"
        )
    return resolved


def _plugin_schemes() -> set[str]:
    """Tracking-store schemes that installed MLflow plugins register."""
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def _hide_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@", 1)
    return uri


def _tcp_error(host: str, port: int) -> str | None:
    """Why nothing answers at ``host:port`` within :data:`TIMEOUT`, or ``None`` when something does."""
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except TimeoutError:
        return f"no answer within {TIMEOUT:.0f}s"
    except OSError as error:
        return error.strerror or str(error)
    return None


def _check_server(uri: str) -> None:
    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TrackingStoreError(
            f"--tracking-uri {uri}: the port is not a number; e.g. http://127.0.0.1:5000"
        ) from None
    if not parts.hostname:
        raise TrackingStoreError(f"--tracking-uri {uri}: no host; e.g. http://127.0.0.1:5000")
    why = _tcp_error(parts.hostname, port)
    if why:  # before importing MLflow's client: a closed port fails in milliseconds
        raise TrackingStoreError(
            f"--tracking-uri {uri}: no MLflow server answers at {parts.hostname}:{port} ({why}); "
            f"{START_SERVER}, or fix the URI"
        )

    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            MLFLOW_PROBE,
            "GET",
            max_retries=0,
            backoff_factor=0,
            timeout=TIMEOUT,
            raise_on_status=False,
            params={"experiment_name": "Default"},
        )
    except Exception as error:  # MlflowException wrapping requests' timeout, TLS and connection errors
        raise TrackingStoreError(f"--tracking-uri {uri}: {_request_failure(str(error))}") from None
    if response.status_code in (401, 403):
        raise TrackingStoreError(
            f"--tracking-uri {uri}: the server refuses nbtl (HTTP {response.status_code}); set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account it accepts"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    is_mlflow = isinstance(body, dict) and (("experiment" in body and response.ok) or "error_code" in body)
    if not is_mlflow:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise TrackingStoreError(
            f"--tracking-uri {uri}: the server there is not an MLflow tracking server (GET {MLFLOW_PROBE} answered "
            f"HTTP {response.status_code}, {kind}); give the address of `mlflow server` (e.g. http://127.0.0.1:5000) "
            "or a SQLite file (sqlite:///mlflow.db)"
        )
    if response.status_code >= 500:
        raise TrackingStoreError(
            f"--tracking-uri {uri}: the MLflow server fails ({body.get('error_code')}: "
            f"{str(body.get('message', ''))[:200]}); see the server's log"
        )


def _request_failure(message: str) -> str:
    """What went wrong in a failed HTTP request, and what to do, from MLflow's message about it."""
    lower = message.lower()
    if "ssl" in lower or "certificate" in lower:
        return (
            "the TLS handshake failed; for a self-signed certificate set MLFLOW_TRACKING_SERVER_CERT_PATH "
            "(or MLFLOW_TRACKING_INSECURE_TLS=true), or use http://"
        )
    if "timeout" in lower or "timed out" in lower:
        return (
            f"the server accepts connections but sent no HTTP answer within {TIMEOUT:.0f}s; check that it is an "
            f"MLflow server ({START_SERVER}) or fix the URI"
        )
    cause = message.split("Caused by ", 1)[-1].strip().splitlines()[0][:160] if message.strip() else "no reason given"
    return (
        f"the request to the server failed ({cause}); check that it is an MLflow server ({START_SERVER}) or fix the URI"
    )


def _sqlite_path(uri: str) -> Path | None:
    """The file of ``sqlite:///PATH`` (``None`` for an in-memory database)."""
    path = uri[len("sqlite://") :].split("?", 1)[0]
    if path in ("", "/", "/:memory:") or path.startswith("/file::memory:"):
        return None
    return Path(path[1:] if path.startswith("/") else path)


def _check_writable_folder(uri: str, folder: Path, what: str) -> None:
    """``folder`` exists and can be written, or can be created (its nearest existing ancestor can be written)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TrackingStoreError(
            f"--tracking-uri {uri}: cannot create {what} in {folder}: {existing} is a file, not a folder; fix the path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write to" if existing == folder else f"create {folder} under"
        raise TrackingStoreError(
            f"--tracking-uri {uri}: cannot {verb} {existing} (permission denied); choose a folder you can write to"
        )


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        raise TrackingStoreError(
            f"--tracking-uri {uri}: an in-memory SQLite store vanishes with this process and the "
            "trials cannot reach it; give a file, e.g. sqlite:///mlflow.db"
        )
    if path.is_dir():
        raise TrackingStoreError(
            f"--tracking-uri {uri}: {path} is a folder; name a database file in it, e.g. sqlite:///{path / 'mlflow.db'}"
        )
    if path.exists():
        try:
            with open(path, "rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except OSError as error:
            raise TrackingStoreError(
                f"--tracking-uri {uri}: cannot read {path} ({error.strerror}); fix its "
                "permissions or choose another file"
            ) from None
        if header and header != SQLITE_HEADER:
            raise TrackingStoreError(
                f"--tracking-uri {uri}: {path} is not a SQLite database; name a new file or an "
                "MLflow SQLite store, e.g. sqlite:///mlflow.db"
            )
        if not os.access(path, os.W_OK):
            raise TrackingStoreError(
                f"--tracking-uri {uri}: {path} is read-only; fix its permissions or choose another file"
            )
    # SQLite writes a journal next to the file, so its folder must be writable too.
    _check_writable_folder(uri, path.parent, "the database")


def _check_file_store(uri: str) -> None:
    from urllib.request import url2pathname

    parts = urlsplit(uri)
    path = Path(url2pathname(parts.netloc + parts.path if parts.netloc not in ("", "localhost") else parts.path))
    if path.exists() and not path.is_dir():
        raise TrackingStoreError(
            f"--tracking-uri {uri}: {path} is a file; a file store is a folder (or use sqlite:///mlflow.db)"
        )
    _check_writable_folder(uri, path, "the store")


def _check_database(uri: str, engine: str) -> None:
    shown = _hide_password(uri)
    try:
        from sqlalchemy.engine import make_url

        url = make_url(uri)
        url.get_dialect().import_dbapi()
    except ImportError as error:
        raise TrackingStoreError(
            f"--tracking-uri {shown}: the database driver is not installed ({error}); install it, "
            "e.g. pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL)"
        ) from None
    except Exception as error:  # ArgumentError, NoSuchModuleError: a URL SQLAlchemy cannot read
        raise TrackingStoreError(
            f"--tracking-uri {shown}: not a database URL SQLAlchemy can read ({error}); "
            "e.g. postgresql://USER:PASSWORD@HOST:5432/DATABASE"
        ) from None
    host, port = url.host or "localhost", url.port or DATABASE_PORTS[engine]
    why = _tcp_error(host, port)
    if why:
        raise TrackingStoreError(
            f"--tracking-uri {shown}: no database answers at {host}:{port} ({why}); start it or fix the URL"
        )


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
