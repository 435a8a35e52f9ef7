"""Checks of the tracking store a command needs, made in seconds before any data is decoded or Ray starts (the Ray
checks are :mod:`nbtl.search.cluster`'s).

Without them a wrong ``--tracking-uri`` surfaces minutes later (MLflow retries a closed port for
about four minutes) as a long traceback after Ray has started, and a wrong ``--address`` hangs
while Ray retries its GCS. Each check fails with one line (:class:`nbtl.errors.ServiceError`)
naming the URI or address, what is wrong and what to do.

``check_tracking_uri`` speaks to the store only as MLflow's own client would (its credentials from
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` and TLS settings).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from nbtl.errors import TrackingStoreError
from nbtl.tracking.client import resolve_tracking_uri

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
