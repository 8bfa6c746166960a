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
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError

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


def is_initialized(db: Path) -> bool:
    """True if ``db`` holds a Tiled catalog schema (read-only check, creates nothing)."""
    if not db.is_file() or db.stat().st_size == 0:
        return False
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return row is not None


def embedded_client(
    data_dir: Path, readable_dirs: Sequence[str | Path] = (), *, readonly: bool = False
) -> tuple[Any, Any]:
    """A Tiled client (and its Context, to close) on the SQLite catalog in ``data_dir``."""
    db = data_dir / CATALOG_DB
    initialized = is_initialized(db)
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
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    try:
        adapter = from_uri(
            f"sqlite:///{db}",
            writable_storage=[data_dir / "data", f"sqlite:///{data_dir / STORAGE_DB}"],
            readable_storage=[frames, *(Path(d).expanduser().absolute() for d in readable_dirs)],
            init_if_not_exists=not initialized,
            specs=CATALOG_SPECS,
        )
        with warnings.catch_warnings():
            # starlette.testclient (which Tiled's in-process transport uses) warns about httpx.
            warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            context = Context.from_app(build_app(adapter))
        client = from_context(context)
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError(
            f"cannot open the catalog: {type(exc).__name__}: {exc}.",
            resource=str(db),
            fix="check that the directory is writable and the files are not damaged; a "
            "half-created catalog.db from an interrupted first start can be deleted.",
        ) from exc
    return client, context


def remote_client(uri: str, api_key: str | None) -> Any:
    """A Tiled client on a server (same Catalog API, for labs that outgrow one machine)."""
    from tiled.client import from_uri

    try:
        return from_uri(uri, api_key=api_key)
    except Exception as exc:
        raise CatalogError(
            f"cannot reach the Tiled server: {type(exc).__name__}: {exc}.",
            resource=uri,
            fix="check the URI, that the server runs ('tiled serve catalog ...'), and the API key.",
        ) from exc
