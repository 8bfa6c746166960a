"""The ``Catalog``: one object for writing runs safely and finding them again.

Why it is built this way:

* The same object works embedded (SQLite files in a data directory) and against a Tiled server,
  so code written on one lab PC keeps working when the lab moves to a server.
* The writer (a thread plus open log files) is created on first use of ``.writer``: readers,
  the CLI and other processes pay nothing for it.
* Opening a writable catalog first recovers the runs a crash left in the write-ahead log, so a
  scientist who restarts after a crash finds the interrupted scan in the catalog, marked
  incomplete, without having to know that recovery exists. A program that must start at once
  (the runtime) hands them to the writer instead (``background_recovery``): N pending runs
  would otherwise cost N replays of start-up time.
* Reads page through Tiled (its server returns at most 300 nodes a request) and turn a lock
  held by another process into ``CatalogLocked`` naming it (see ``_sqlite``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError, DaqbridgeError

from ._embedded import (
    CATALOG_DB,
    STORAGE_DB,
    close_in_process,
    embedded_client,
    forget_exit_hook,
    remote_client,
    resolve_data_dir,
)
from ._recovery import RecoveredRun, recover_all, report
from ._sqlite import LOCK_TIMEOUT, is_locked, locked_error
from ._wal import WriteAheadLog, pending_logs, prune_done
from ._writer import MAX_RUNS_BEHIND, CatalogWriter

logger = logging.getLogger(__name__)

#: Runs asked of Tiled in one request: its server refuses pages of more than 300.
PAGE = 200


class UnknownRun(CatalogError, KeyError):
    """No run (or more than one) matches the uid, uid prefix or scan id asked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return CatalogError.__str__(self)


@dataclass(frozen=True)
class RunSummary:
    """One line of ``daqbridge catalog list``: who, what, when, and did it finish."""

    uid: str
    scan_id: int | None
    plan_name: str | None
    time: float | None  # start time, POSIX seconds
    exit_status: str | None  # None while the run is going on (or was never stopped)
    num_events: dict[str, int] | None  # per stream, from the stop document
    reason: str = ""

    @property
    def events(self) -> int | None:
        return None if self.num_events is None else sum(self.num_events.values())

    @property
    def points(self) -> int | None:
        """Events of the ``primary`` stream: the plan's points, without the baseline's two
        readings or a monitor's updates (what a scientist counts in a scan)."""
        return None if self.num_events is None else self.num_events.get("primary", 0)

    @property
    def complete(self) -> bool:
        return self.exit_status == "success"

    @classmethod
    def from_metadata(cls, key: str, metadata: dict) -> RunSummary:
        start = metadata.get("start") or {}
        stop = metadata.get("stop") or None
        return cls(
            uid=start.get("uid", key),
            scan_id=start.get("scan_id"),
            plan_name=start.get("plan_name"),
            time=start.get("time"),
            exit_status=stop.get("exit_status") if stop else None,
            num_events=dict(stop.get("num_events") or {}) if stop else None,
            reason=(stop.get("reason") or "") if stop else "",
        )


class Catalog:
    """A catalog of Bluesky runs, written crash-safely.

    * ``client``: the Tiled client root (``catalog.client[uid].primary.read()``).
    * ``writer``: the callback to subscribe: ``RE.subscribe(catalog.writer)``.
    * ``frames_dir``: where cameras write their HDF5 files so the catalog can serve them.
    """

    def __init__(
        self,
        client: Any,
        *,
        data_dir: Path,
        context: Any = None,
        uri: str | None = None,
        readonly: bool = False,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        max_runs_behind: int = MAX_RUNS_BEHIND,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self._client = client
        self._context = context
        self.data_dir = Path(data_dir)
        self.frames_dir = self.data_dir / "frames"
        self.wal_dir = self.data_dir / "wal"
        self.uri = uri
        self.readonly = readonly
        self._flush_interval = flush_interval
        self._max_queue = max_queue
        self._max_runs_behind = max_runs_behind
        self.lock_timeout = lock_timeout
        self._writer: CatalogWriter | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: What recovery did when the catalog was opened (filled as it goes when it runs in
        #: the background: ``flush()`` waits for it).
        self.recovered: list[RecoveredRun] = []
        self._exit_hook = _register_exit_hook(self)

    # --- writing ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        return self._client

    @property
    def writer(self) -> CatalogWriter:
        """The crash-safe RunEngine callback (created on first use)."""
        self._check_open()
        if self.readonly:
            raise CatalogError(
                "this catalog was opened read-only; it has no writer.",
                resource=self.where,
                fix="open it with open_catalog(..., readonly=False) in the process that runs "
                "the RunEngine.",
            )
        with self._lock:
            if self._writer is None:
                self._writer = CatalogWriter(
                    self._client,
                    WriteAheadLog(self.wal_dir),
                    flush_interval=self._flush_interval,
                    max_queue=self._max_queue,
                    max_runs_behind=self._max_runs_behind,
                    # The in-process server has no streaming cache; a Tiled server may.
                    close_streams=self._context is None,
                )
            return self._writer

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every document received so far is in the catalog.

        Also waits for the runs a background recovery still has to put in. Raises
        ``CatalogError`` on timeout, or if runs could not be written (they stay in the
        write-ahead log). After ``close()`` there is nothing left to flush.
        """
        if self._writer is not None and not self._closed:
            self._writer.flush(timeout)

    def recover(self, timeout: float = 300.0) -> list[RecoveredRun]:
        """Put every run left in the write-ahead log (by a crash) into the catalog.

        A background recovery started at open is finished first (within ``timeout``), so the
        two never race for the same log.
        """
        self._check_open()
        if self.readonly:
            raise CatalogError(
                "a read-only catalog cannot recover runs.",
                resource=self.where,
                fix="run 'daqbridge catalog recover' or open the catalog writable.",
            )
        if self._writer is not None and self._writer.stats.recoveries_pending:
            self._writer.flush(timeout)
        results = recover_all(self._client, self.wal_dir)
        for result in results:
            report(result)
        return results

    def recover_in_background(self) -> int:
        """Hand the runs left in the write-ahead log to the writer; returns how many.

        They go into the catalog between live documents; ``recovered`` fills as they do, and
        ``flush()`` waits for them.
        """
        self._check_open()
        logs = pending_logs(self.wal_dir)
        if logs:
            self.writer.recover_in_background(logs, self.recovered.append)
        return len(logs)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is pending, stop the writer, close the in-process server."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close(timeout)
        finally:
            forget_exit_hook(self._exit_hook)  # it would keep a closed catalog's hook forever
            atexit.unregister(self._exit_hook)
            if self._context is not None:
                try:
                    close_in_process(self._context)
                except Exception:  # closing a dead in-process app must not mask the real error
                    logger.debug("closing the Tiled context failed", exc_info=True)

    def _close_at_exit(self) -> None:
        try:
            self.close(timeout=10.0)
        except Exception as exc:  # at exit, report and go: the log keeps everything
            logger.error("closing the catalog at exit: %s", exc)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------------------

    def runs(self, limit: int | None = 20) -> list[RunSummary]:
        """Summaries of the most recent runs, newest first."""
        self._check_open()
        if limit is not None and limit <= 0:
            return []
        with self.reading():
            if limit is None:
                items = list(self._client.items())[::-1]
            else:
                items = self._newest(limit)
        return [RunSummary.from_metadata(key, dict(node.metadata)) for key, node in items]

    def _newest(self, limit: int) -> list[tuple[str, Any]]:
        """The newest ``limit`` runs, a page at a time (Tiled's server caps a page at 300)."""
        items: list[tuple[str, Any]] = []
        while len(items) < limit:
            size = min(PAGE, limit - len(items))
            # Tiled slices from the end only backwards: [-1-k : -1-k-n : -1] skips the newest k.
            first = -1 - len(items)
            page = list(self._client.items()[first : first - size : -1])
            items.extend(page)
            if len(page) < size:
                break
        return items

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Turn a lock another process holds on a catalog file into ``CatalogLocked``.

        Wrap reads made through ``client`` in it (``with catalog.reading(): ...``); the in-process
        server raises the database driver's own error otherwise.
        """
        try:
            yield
        except DaqbridgeError:
            raise
        except Exception as exc:
            if self._context is not None and is_locked(exc):
                files = [self.data_dir / CATALOG_DB, self.data_dir / STORAGE_DB]
                raise locked_error(files, self.lock_timeout) from None
            raise

    def __getitem__(self, key: str | int) -> Any:
        """A run by full uid, unique uid prefix (5+ characters), scan id, or -1 for the latest.

        A key typed as digits (``"1234"``, ``"-1"``) is a scan id first; a uid may start with
        digits too (about 1 uid in 40 has 8 leading digits), so 5+ digits that name no scan id
        are tried as a uid prefix, and leading zeros are kept for that.
        """
        if isinstance(key, str) and key.lstrip("-").isdigit():
            try:
                return self._run(int(key))
            except UnknownRun:
                if key.startswith("-") or len(key) < 5:
                    raise
        return self._run(key)

    def _run(self, key: str | int) -> Any:
        self._check_open()
        try:
            with self.reading():
                return self._client[key]
        except (KeyError, ValueError, IndexError) as exc:
            why = exc.args[0] if exc.args else type(exc).__name__
            raise UnknownRun(
                f"no unique run matches {key!r} ({why}).",
                resource=self.where,
                fix="use 'daqbridge catalog list' to see the runs; give 5+ characters of the uid "
                "(more if several runs share them).",
            ) from None

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except UnknownRun:
            return False
        return True

    def __len__(self) -> int:
        with self.reading():
            return len(self._client)

    @property
    def where(self) -> str:
        return self.uri or str(self.data_dir)

    def _check_open(self) -> None:
        if self._closed:
            raise CatalogError(
                "the catalog is closed.",
                resource=self.where,
                fix="open it again with open_catalog().",
            )

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writable"
        return f"<Catalog {self.where} ({mode})>"


def _close_at_exit(ref: weakref.ref[Catalog]) -> None:
    catalog = ref()
    if catalog is not None:
        catalog._close_at_exit()


def _register_exit_hook(catalog: Catalog) -> Callable[[], None]:
    """Close the catalog at interpreter exit while the in-process Tiled server still works.

    Plain ``atexit`` is too late: by then concurrent.futures has shut the thread pool that runs
    the in-process server's event loop, so the last documents could not be written (the run
    would wait in the log for the next start) and the exit could even hang. ``threading``'s exit
    hooks run before that, newest first, so a runtime that registers its own hook after opening
    the catalog still closes first. ``atexit`` is the fallback where the hook does not exist.
    """
    hook = functools.partial(_close_at_exit, weakref.ref(catalog))
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading exit hooks")
        register(hook)
    except RuntimeError:
        atexit.register(hook)
    return hook


def open_run_list(
    uri: str | None,
    api_key: str | None,
    data_dir: str | Path | None = None,
    *,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Catalog:
    """A read-only catalog for listing runs (``runs()``): on the Tiled server at ``uri``, or
    with ``uri`` None the embedded one in ``data_dir`` (``$DAQBRIDGE_DATA`` wins, as for
    ``open_catalog``).

    Its runs are Tiled's plain containers: their metadata is all a run list reads, and the
    Bluesky run clients that Tiled would otherwise pick for the ``CatalogOfBlueskyRuns`` root
    import bluesky-tiled-plugins, xarray and dask (about 3 s of a 3.5 s ``catalog list`` through
    a server, about 1 s of CPU embedded, measured). Look a run up by scan id or read its streams
    through ``open_catalog`` instead.
    """
    directory = resolve_data_dir(data_dir)
    if uri is None:
        client, context = embedded_client(
            directory, readonly=True, lock_timeout=lock_timeout, plain_containers=True
        )
        return Catalog(
            client, data_dir=directory, context=context, readonly=True, lock_timeout=lock_timeout
        )
    from tiled.client import from_uri
    from tiled.client.container import Container

    try:
        client = from_uri(uri, api_key=api_key, structure_clients={"container": Container})
    except Exception as exc:
        raise CatalogError(
            f"cannot list the runs of the Tiled server: {type(exc).__name__}: {exc}.",
            resource=uri,
            fix="check that the server runs (`daqbridge lab status` for the lab's own) and the "
            "API key.",
        ) from exc
    return Catalog(client, data_dir=directory, uri=uri, readonly=True)


def open_catalog(
    data_dir: str | Path | None = None,
    *,
    uri: str | None = None,
    api_key: str | None = None,
    readable_dirs: Sequence[str | Path] = (),
    readonly: bool = False,
    recover: bool = True,
    background_recovery: bool = False,
    flush_interval: float = 1.0,
    max_queue: int = 10_000,
    max_runs_behind: int = MAX_RUNS_BEHIND,
    lock_timeout: float = LOCK_TIMEOUT,
    keep_done_logs_days: float = 7.0,
) -> Catalog:
    """Open (creating if needed) the lab's catalog.

    Embedded by default: a SQLite-backed Tiled catalog in ``data_dir`` (``$DAQBRIDGE_DATA`` wins
    when set). With ``uri`` (``http://host:port``) and ``api_key``, a Tiled server instead; the
    write-ahead log still lives in ``data_dir/wal``. ``readonly`` opens an existing catalog for
    reading from another process: no schema creation, no recovery, no writer. Unless ``recover``
    is False, runs a crash left in the write-ahead log are put into the catalog first
    (``Catalog.recovered`` says what was done); with ``background_recovery`` the writer does it
    after this returns, between live documents (``flush()`` waits for it).

    ``max_runs_behind``: finished runs that may wait for the catalog before a new run waits
    (back-pressure). ``lock_timeout``: seconds any access waits for another process's lock on
    the catalog's SQLite files before ``CatalogLocked`` names that process.
    """
    directory = resolve_data_dir(data_dir)
    context = None
    if uri:
        if not readonly:
            (directory / "wal").mkdir(parents=True, exist_ok=True)
        client = remote_client(uri, api_key)
    else:
        client, context = embedded_client(
            directory, readable_dirs, readonly=readonly, lock_timeout=lock_timeout
        )
    catalog = Catalog(
        client,
        data_dir=directory,
        context=context,
        uri=uri,
        readonly=readonly,
        flush_interval=flush_interval,
        max_queue=max_queue,
        max_runs_behind=max_runs_behind,
        lock_timeout=lock_timeout,
    )
    if not readonly:
        # A writable catalog will write: import bluesky-tiled-plugins' writer now (the runtime
        # opens the catalog on a thread of its own, beside the instruments' start-up) rather
        # than at the first start document, where the first run's flush would wait for it.
        from ._tiled_writer import check_library

        try:
            check_library()  # its private names, before anything is written
            prune_done(catalog.wal_dir, keep_done_logs_days)
            if recover and background_recovery:
                catalog.recover_in_background()
            elif recover:
                catalog.recovered = catalog.recover()
        except BaseException:
            catalog.close()
            raise
    return catalog
