"""Where the catalog lives and how a Tiled client to it is made (embedded or remote).

Why it is built this way:

* Embedded means a file-backed Tiled catalog on SQLite served inside this process
  (``Context.from_app``): no server to start, and any other process can open the same files the
  same way and read while we write. Table storage is SQLite, never DuckDB: DuckDB locks its file
  against every other process while the writer lives (STACK_NOTES).
* ``init_if_not_exists`` spawns a subprocess for the schema migration (about 3 s), so it runs only
  when the database has no schema yet. Checking is done with a read-only sqlite3 connection,
  because opening a missing catalog through Tiled leaves an empty ``catalog.db`` behind.
* Camera HDF5 files must be under a ``readable_storage`` directory or Tiled refuses to serve them:
  ``DIR/frames`` is always one, plus whatever directories the caller adds.
* Every SQLite connection of the in-process server waits ``lock_timeout`` for another process's
  lock, and a lock held longer is reported with its holder (see ``_sqlite``).
* Closing must free the in-process app. Tiled registers its test client's ``__exit__`` as a
  ``threading`` exit hook and never removes it, so every closed catalog stayed reachable from
  ``threading`` with its whole FastAPI app (about 61,000 objects, 8 MB per open/close, measured);
  FastAPI's memo caches then kept the app's dependency closures and their database engines.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError

from ._sqlite import LOCK_TIMEOUT, describe, is_locked, locked_error, wait_for_locks

#: Environment variable naming the data directory; it overrides the ``data_dir`` argument.
DATA_ENV = "DAQBRIDGE_DATA"
#: The root spec that makes the Tiled root a catalog of Bluesky runs (``c[-1]``, partial uids).
CATALOG_SPECS = [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}]

CATALOG_DB = "catalog.db"
STORAGE_DB = "storage.sqlite"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/daqbridge``, else ``~/.local/share/daqbridge``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "daqbridge"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory to use: ``$DAQBRIDGE_DATA`` if set, else ``data_dir``, else default.

    The environment wins so a deployment (or a test) can redirect every program's data without
    editing the profile that passes ``data_dir``.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        chosen = Path(env)
    elif data_dir is not None:
        chosen = Path(data_dir)
    else:
        chosen = default_data_dir()
    return chosen.expanduser().absolute()


def is_initialized(db: Path, lock_timeout: float = LOCK_TIMEOUT) -> bool:
    """True if ``db`` holds a Tiled catalog schema (read-only check, creates nothing).

    Raises ``CatalogLocked`` if another process keeps the file locked for ``lock_timeout``: a
    locked catalog is not a missing one, and taking it for one would start a schema migration
    (a subprocess, about 3 s) that fails on the same lock.
    """
    if not db.is_file() or db.stat().st_size == 0:
        return False
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=lock_timeout)
        try:
            row = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        if is_locked(exc):
            raise locked_error([db], lock_timeout) from None
        raise CatalogError(
            f"{db.name} cannot be read as a SQLite database: {describe(exc)}.",
            resource=str(db),
            fix="check that --data (or DAQBRIDGE_DATA) names a daqbridge data directory and that "
            "the file is readable; if it is damaged, restore it from a backup.",
        ) from None
    return row is not None


def check_writable(data_dir: Path) -> None:
    """Refuse a writable open of a directory this process cannot write, before any run starts.

    Otherwise the first run would fail inside the write-ahead log, and ``catalog recover`` inside
    an SQL INSERT.
    """
    for path in (data_dir, data_dir / "wal", data_dir / CATALOG_DB, data_dir / STORAGE_DB):
        if path.exists() and not os.access(path, os.W_OK):
            raise CatalogError(
                f"the data directory is read-only here ({path} cannot be written).",
                resource=str(data_dir),
                fix="to read it, open it with open_catalog(..., readonly=True) or use "
                "'daqbridge catalog list/show/export'; to record or recover runs, choose a "
                "writable directory with --data or DAQBRIDGE_DATA.",
            )


def embedded_client(
    data_dir: Path,
    readable_dirs: Sequence[str | Path] = (),
    *,
    readonly: bool = False,
    lock_timeout: float = LOCK_TIMEOUT,
    plain_containers: bool = False,
) -> tuple[Any, Any]:
    """A Tiled client (and its Context, to close) on the SQLite catalog in ``data_dir``.

    ``plain_containers``: runs come as Tiled's plain containers, not bluesky-tiled-plugins'
    run clients (whose import a list of runs does not need: see ``open_run_list``).
    """
    db = data_dir / CATALOG_DB
    initialized = is_initialized(db, lock_timeout)
    if readonly and not initialized:
        raise CatalogError(
            f"there is no catalog in {data_dir} to read.",
            resource=str(db),
            fix="check --data or DAQBRIDGE_DATA, or write a first run (open_catalog without "
            "readonly creates the catalog).",
        )
    frames = data_dir / "frames"
    if not readonly:
        try:
            for sub in ("data", "frames", "wal"):
                (data_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(
                f"cannot create the data directory: {exc}.",
                resource=str(data_dir),
                fix="choose a writable directory with --data or DAQBRIDGE_DATA.",
            ) from exc
        check_writable(data_dir)
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    # The in-process server is ours, not a service: it must not greet each start on stderr
    # ("Tiled version ...", INFO on a handler of its own, level set at its import). Here, on
    # the thread that opens the catalog, not by the caller before: the import takes seconds.
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    context = None
    try:
        adapter = from_uri(
            f"sqlite:///{db}",
            writable_storage=[data_dir / "data", f"sqlite:///{data_dir / STORAGE_DB}"],
            readable_storage=[frames, *(Path(d).expanduser().absolute() for d in readable_dirs)],
            init_if_not_exists=not initialized,
            specs=CATALOG_SPECS,
        )
        wait_for_locks(adapter.context.engine.sync_engine, lock_timeout)
        with warnings.catch_warnings():
            # starlette.testclient (which Tiled's in-process transport uses) warns about httpx.
            warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            context = Context.from_app(build_app(adapter))
        _table_connections_wait(adapter, lock_timeout)
        if plain_containers:
            from tiled.client.container import Container

            client = from_context(context, structure_clients={"container": Container})
        else:
            client = from_context(context)
    except Exception as exc:
        if context is not None:
            close_in_process(context)
        if isinstance(exc, CatalogError):
            raise
        if is_locked(exc):
            raise locked_error([db, data_dir / STORAGE_DB], lock_timeout) from None
        raise CatalogError(
            f"cannot open the catalog: {describe(exc)}.",
            resource=str(db),
            fix="check that the data directory is writable and has free space; if catalog.db "
            "was damaged, restore it from a backup.",
        ) from None
    return client, context


def _table_connections_wait(adapter: Any, lock_timeout: float) -> None:
    """Give Tiled's table connections (ADBC, pooled per storage) the same busy timeout.

    They are made by a SQLAlchemy pool on the storage object Tiled shares per file in this
    process (``SQLStorage._connection_pool``, created on first use); the pool's ``connect``
    event runs the pragma on each new connection. A storage Tiled cannot open (a read-only
    directory: Tiled refuses to read tables there at all) is left alone.
    """
    for storage in getattr(adapter.context, "readable_storage", {}).values():
        if not str(getattr(storage, "uri", "")).startswith("sqlite:"):
            continue
        try:
            pool = storage._connection_pool
        except Exception:  # noqa: BLE001 - reading its tables fails the same way, with a reason
            continue
        wait_for_locks(pool, lock_timeout)


def close_in_process(context: Any) -> None:
    """Close the in-process Tiled app so that nothing keeps it alive afterwards."""
    client = getattr(context, "http_client", None)
    try:
        context.close()
    finally:
        if client is not None:
            forget_exit_hook(client.__exit__)
        _forget_dependency_memos()


def forget_exit_hook(function: Callable[..., Any]) -> None:
    """Remove ``function`` from ``threading``'s exit hooks (no public API removes one)."""
    hooks = getattr(threading, "_threading_atexits", None)
    if not isinstance(hooks, list):
        return
    for hook in list(hooks):
        if hook == function or getattr(hook, "func", None) == function:
            try:
                hooks.remove(hook)
            except ValueError:  # removed meanwhile
                pass


def _forget_dependency_memos() -> None:
    """Clear FastAPI's memo of which dependency callables are coroutines or generators.

    FastAPI 0.16x keeps it in lru_caches of 4,096 entries keyed by the callable; Tiled builds its
    dependencies as closures per app, so the caches kept the closures of the last ~80 closed apps
    and, through them, their database engines (+3,300 objects per open/close, measured). They
    are pure memos: clearing them costs one inspection per dependency at the next request.
    """
    try:
        from fastapi.dependencies import models
    except ImportError:  # pragma: no cover - FastAPI comes with tiled[server]
        return
    for value in list(vars(models).values()):
        clear = getattr(value, "cache_clear", None)
        if callable(clear) and getattr(value, "__module__", None) == models.__name__:
            clear()


REMOTE_CONNECT_TIMEOUT = 2.0
"""Seconds a Tiled server has to accept the connection when a catalog is opened on it."""


def remote_client(uri: str, api_key: str | None) -> Any:
    """A Tiled client on a server (same Catalog API, for labs that outgrow one machine).

    One connection is tried first, without retries: tiled's client retries a refused connection
    for up to 45 s (stamina, on every request), so a server that is down took 33 s to report.
    Once the server has answered, the client's retries are for what they are for: blips.
    """
    import httpx
    from tiled.client import from_uri

    try:
        httpx.head(
            uri,
            timeout=httpx.Timeout(30.0, connect=REMOTE_CONNECT_TIMEOUT),
            verify=uri.startswith("https://"),  # no CA bundle to read for plain http
        )
    except httpx.TransportError as exc:
        raise CatalogError(
            f"cannot connect to the Tiled server: {type(exc).__name__}: {exc}.",
            resource=uri,
            fix="check the URI and that the server runs ('tiled serve catalog ...', or "
            "`daqbridge catalog serve` on its machine).",
        ) from None
    try:
        return from_uri(uri, api_key=api_key)
    except Exception as exc:
        raise CatalogError(
            f"cannot reach the Tiled server: {type(exc).__name__}: {exc}.",
            resource=uri,
            fix="check the URI, that the server runs ('tiled serve catalog ...'), and the API key.",
        ) from exc
