"""The crash-safe catalog writer: a RunEngine callback that returns in tens of microseconds.

Why it is built this way:

* On the RunEngine thread a document is appended to the write-ahead log (one ``os.write``, about
  0.02 ms) and to an in-memory inbox (a deque append: no lock, no thread wake-up). Everything slow
  (Tiled HTTP calls, SQLite, zarr) happens on one worker thread. The stock ``TiledWriter`` with
  ``batch_size=1`` is crash safe but costs about 40 ms per event on the RunEngine thread
  (STACK_NOTES); at its default batch (10 000 events) it is fast but holds a whole run in memory
  until the stop document, so a crash loses it and no other process sees the events meanwhile.
* The worker is NOT woken per document: waking a thread per event costs about 0.04 ms of GIL
  hand-over on the RunEngine thread. It drains the inbox every ``poll_interval`` (0.1 s) while a
  run is open, sleeps while none is, and is woken at once only by ``flush()`` and ``close()``.
* The worker feeds bluesky-tiled-plugins' run writer, built as ``TiledWriter`` builds it (one
  per run, default batch; see ``_tiled_writer`` for the private names it relies on), and every
  ``flush_interval`` seconds (1 s) writes what the run has cached: readers in other processes
  see new events within about a second, while at hundreds of events per second a batch holds
  hundreds of rows, so Tiled's per-request cost (about 30 ms of CPU per append, measured) is
  paid rarely. Before any Tiled write of
  a run, its log is fsynced, so the catalog never holds a document a power cut could take from
  the log. Its normaliser skips the second schema check of events (see ``_normalizer``).
* The inbox is bounded by ``max_queue`` documents without ever blocking the RunEngine: when it is
  full, that run stops feeding Tiled live (its documents still go to the log) and, at its stop
  document, the worker replaces the partial run with a replay from the log. Nothing is lost and
  the scan never waits on the catalog.
* A Tiled error on a run (server down, disk full on the server) marks that run broken; its
  documents keep going to the log and the worker tries one replay at the stop document. If that
  fails too, the log stays pending and ``Catalog.recover()`` (run at every start) finishes the job.
* Back-pressure, counted in runs: a run costs the catalog a fixed ~250 ms of CPU (nine HTTP
  requests to the in-process server, whatever its size), while a RunEngine can finish a short
  run every ~35 ms. Unbounded, the worker fell minutes behind, every finished run kept its log
  (and a file descriptor) open until written, and with a 400-fd limit runs aborted on "Too
  many open files" (measured: 4,503 queued documents, 589 fds). So when ``max_runs_behind``
  finished runs wait for the catalog, the next run's start document waits (on the RunEngine
  thread, before anything of the new run is logged) until one is written. Nothing is dropped
  and no run aborts; the RunEngine runs at the catalog's pace, with a warning saying so. It
  gives up with a ``CatalogError`` only if the worker finishes nothing for ``stall_timeout``.
* On the embedded catalog the three "close stream" requests per run are skipped: the in-process
  server has no streaming cache and no webhooks, so they did nothing there (about 11 ms each).
* Runs a crash left in the log can be recovered by the worker in the background
  (``recover_in_background``), between live documents, which always go first: a restart after
  a crash with N pending runs no longer waits N replays (about 1 s each under load) to start.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daqbridge.errors import CatalogError

from ._recovery import (
    ALREADY_COMPLETE,
    REPLACED,
    REPLAYED,
    RecoveredRun,
    recover_log,
    recover_owned,
    report,
)
from ._sqlite import describe
from ._wal import WriteAheadLog

if TYPE_CHECKING:
    from ._tiled_writer import BatchingTiledWriter

logger = logging.getLogger(__name__)

#: Documents the TiledWriter turns into a catalog write at once (the log is fsynced first).
_WRITTEN_AT_ONCE = frozenset({"start", "descriptor", "stop"})
#: Documents the TiledWriter caches until its batch is written.
_BATCHED = frozenset({"event", "event_page", "stream_datum", "datum", "datum_page"})
_CLOSE = ("close",)

#: Finished runs that may wait for the catalog before the next run's start waits for them.
MAX_RUNS_BEHIND = 4
#: Seconds a start document waits for a worker that finishes no run at all meanwhile.
STALL_TIMEOUT = 60.0
#: Seconds without back-pressure after which a new wait is worth a warning again.
WARN_AGAIN_AFTER = 60.0


@dataclass
class _Run:
    writer: BatchingTiledWriter
    broken: bool = False


@dataclass
class WriterStats:
    """What the catalog writer has done, for status pages and tests."""

    documents: int = 0  # documents handed to Tiled
    runs_written: int = 0  # runs whose stop reached the catalog live
    runs_repaired: int = 0  # runs replayed from the log by the writer (overflow or Tiled error)
    overflowed_runs: int = 0  # runs that hit max_queue
    queued: int = 0  # documents waiting for the worker now
    max_queued: int = 0
    runs_behind: int = 0  # finished runs waiting for the catalog now (each keeps its log open)
    max_runs_behind: int = 0  # the most that ever waited
    backpressure_waits: int = 0  # start documents that waited for the catalog to catch up
    backpressure_seconds: float = 0.0  # how long they waited in all
    runs_recovered: int = 0  # runs recovered in the background by the worker
    recoveries_pending: int = 0  # logs still to recover in the background
    errors: list[str] = field(default_factory=list)  # the most recent catalog errors


class CatalogWriter:
    """Subscribe it to a RunEngine: ``RE.subscribe(catalog.writer)``.

    ``flush_interval``: seconds between batch writes to Tiled (and fsyncs of the logs) while a
    run goes on. ``max_queue``: documents the worker may lag behind before a run is replayed from
    its log at its stop instead. ``poll_interval``: how often the worker looks for new documents
    while a run is open. ``max_runs_behind``: finished runs that may wait for the catalog before
    a new run's start waits (back-pressure; it bounds the open logs and the time ``flush``
    needs). ``stall_timeout``: seconds that wait may last while the worker finishes nothing.
    ``close_streams``: False for the embedded catalog, whose server has no streams to close.
    """

    def __init__(
        self,
        client: Any,
        wal: WriteAheadLog,
        *,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        poll_interval: float = 0.1,
        max_runs_behind: int = MAX_RUNS_BEHIND,
        stall_timeout: float = STALL_TIMEOUT,
        close_streams: bool = True,
    ) -> None:
        if (
            flush_interval <= 0
            or poll_interval <= 0
            or stall_timeout <= 0
            or max_queue < 1
            or max_runs_behind < 1
        ):
            raise CatalogError(
                f"flush_interval, poll_interval and stall_timeout must be > 0, max_queue and "
                f"max_runs_behind >= 1; got {flush_interval!r}, {poll_interval!r}, "
                f"{stall_timeout!r}, {max_queue!r} and {max_runs_behind!r}.",
                fix="pass positive intervals (seconds) and positive counts.",
            )
        # Before any document: a bluesky-tiled-plugins release without the private names the
        # batch writer uses would otherwise hold every run back until its stop document.
        from ._tiled_writer import check_library

        check_library()
        self._client = client
        self._wal = wal
        self.flush_interval = float(flush_interval)
        self.poll_interval = float(poll_interval)
        self.max_queue = int(max_queue)
        self.max_runs_behind = int(max_runs_behind)
        self.stall_timeout = float(stall_timeout)
        self._close_streams = close_streams
        self._progress = threading.Condition()  # notified whenever a finished run leaves
        self._runs_settled = 0  # finished runs the worker put in the catalog or gave up on
        self._last_wait_end = -WARN_AGAIN_AFTER  # when the last back-pressure wait ended
        self._recovery: collections.deque[Path] = collections.deque()
        self._on_recovered: Callable[[RecoveredRun], None] | None = None
        self._inbox: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._overflowed: set[str] = set()
        self._runs: dict[str, _Run] = {}
        self._pending: set[str] = set()
        self._errors: collections.deque[str] = collections.deque(maxlen=50)
        self._unwritten: list[str] = []  # runs left in the log after a failed write and replay
        self._stats = WriterStats()
        self._closed = False
        self._thread = threading.Thread(
            target=self._work, name="daqbridge-catalog-writer", daemon=True
        )
        self._thread.start()

    # --- RunEngine thread ---------------------------------------------------------------------

    def __call__(self, name: str, doc: dict) -> None:
        if self._closed:
            raise CatalogError(
                f"the catalog writer is closed; the {name} document was not recorded.",
                resource=str(self._wal.directory),
                fix="unsubscribe the writer before closing the catalog, or open the catalog again.",
            )
        if name == "start":
            self._wait_for_room()
        uid = self._wal.append(name, doc)  # raises CatalogError if the log cannot be written
        if uid is None:
            return
        if name == "stop":
            behind = self._wal.waiting_runs
            if behind > self._stats.max_runs_behind:
                self._stats.max_runs_behind = behind
        if uid in self._overflowed:
            if name == "stop":
                self._overflowed.discard(uid)
                self._inbox.append(("repair", uid))
                self._wake.set()  # the abandoned run no longer keeps the worker polling
            return
        depth = len(self._inbox)
        if depth >= self.max_queue and name not in ("start", "stop"):
            self._overflowed.add(uid)
            self._stats.overflowed_runs += 1
            logger.warning(
                "catalog writer is %d documents behind; run %s goes to the catalog from its "
                "write-ahead log at its stop document",
                depth,
                uid,
            )
            self._inbox.append(("abandon", uid))
            return
        if depth > self._stats.max_queued:
            self._stats.max_queued = depth
        self._inbox.append(("doc", uid, name, doc))
        if name == "start":
            self._wake.set()  # the worker sleeps while no run is open

    def _wait_for_room(self) -> None:
        """Back-pressure: hold a new run while ``max_runs_behind`` finished runs wait."""
        if self._wal.waiting_runs < self.max_runs_behind:
            return
        began = time.monotonic()
        with self._progress:
            behind = self._wal.waiting_runs
            if behind < self.max_runs_behind:
                return
            self._stats.backpressure_waits += 1
            # Once per burst, not once per run: a burst of short runs waits at every start.
            quiet = began - self._last_wait_end < WARN_AGAIN_AFTER
            logger.log(
                logging.DEBUG if quiet else logging.WARNING,
                "the catalog is %d finished runs behind the RunEngine; new runs start as it "
                "catches up (it writes a run in about 0.25 s of CPU, whatever its size)",
                behind,
            )
            settled = self._runs_settled
            deadline = began + self.stall_timeout
            while self._wal.waiting_runs >= self.max_runs_behind:
                if self._closed or not self._thread.is_alive():
                    raise CatalogError(
                        f"the catalog writer stopped while {self._wal.waiting_runs} finished "
                        "runs waited for it; the new run was not started.",
                        resource=str(self._wal.directory),
                        fix="open the catalog again: the finished runs are in the write-ahead "
                        "log and recovery puts them in.",
                    )
                now = time.monotonic()
                if now >= deadline:
                    raise CatalogError(
                        f"the catalog writer is {self._wal.waiting_runs} finished runs behind "
                        f"and has written none of them for {self.stall_timeout:g} s; the new "
                        "run was not started.",
                        resource=str(self._wal.directory),
                        fix="check that the catalog is reachable and its disk not full "
                        "('daqbridge catalog list'); the finished runs are safe in the "
                        "write-ahead log.",
                    )
                self._progress.wait(deadline - now)
                if self._runs_settled != settled:  # progress: the stall clock starts again
                    settled = self._runs_settled
                    deadline = time.monotonic() + self.stall_timeout
        self._last_wait_end = time.monotonic()
        self._stats.backpressure_seconds += self._last_wait_end - began

    # --- any thread -----------------------------------------------------------------------------

    def recover_in_background(
        self, logs: Iterable[Path], on_result: Callable[[RecoveredRun], None] | None = None
    ) -> None:
        """Recover these logs (left by a crash) on the worker, whenever no live document waits.

        ``on_result`` is called on the worker with each result. ``flush()`` waits for them too.
        Logs not reached before ``close()`` stay pending for the next recovery.
        """
        self._on_recovered = on_result
        self._recovery.extend(Path(p) for p in logs)
        self._wake.set()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every document received so far, and every run handed to the background
        recovery, is in the catalog (or raise)."""
        if not self._thread.is_alive():
            raise CatalogError(
                "the catalog writer thread is not running; documents are only in the "
                "write-ahead log.",
                resource=str(self._wal.directory),
                fix="open the catalog again: recovery puts the logged runs in the catalog.",
            )
        done = threading.Event()
        self._inbox.append(("flush", done))
        self._wake.set()
        if not done.wait(timeout):
            raise CatalogError(
                f"the catalog writer did not catch up within {timeout:.1f} s "
                f"({len(self._inbox)} documents still queued); they are safe in the "
                "write-ahead log.",
                resource=str(self._wal.directory),
                fix="wait longer (a slow or remote Tiled server), or let recovery finish it later.",
            )
        self._raise_unwritten()

    def _raise_unwritten(self) -> None:
        """Report (once) the runs that could not be put in the catalog since the last report."""
        if not self._unwritten:
            return
        runs, self._unwritten = self._unwritten, []
        raise CatalogError(
            f"{len(runs)} run(s) could not be written to the catalog and stay in the "
            f"write-ahead log: {'; '.join(runs)}.",
            resource=str(self._wal.directory),
            fix="check that the catalog is reachable and its disk not full; the next "
            "open_catalog() or 'daqbridge catalog recover' puts them in.",
        )

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the worker, release the logs of unfinished runs.

        A run still open at close (the session ends mid-scan) stays pending in its log and is
        recovered, marked incomplete, on the next start.
        """
        if self._closed:
            return
        self._closed = True
        with self._progress:  # a start waiting for room must not wait for a closed writer
            self._progress.notify_all()
        self._inbox.append(_CLOSE)
        self._wake.set()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._wal.close()
        if alive:
            raise CatalogError(
                f"the catalog writer did not finish within {timeout:.1f} s of close; unwritten "
                "documents stay in the write-ahead log.",
                resource=str(self._wal.directory),
                fix="run 'daqbridge catalog recover' (or open the catalog) to put them in.",
            )
        self._raise_unwritten()

    @property
    def stats(self) -> WriterStats:
        self._stats.queued = len(self._inbox)
        self._stats.runs_behind = self._wal.waiting_runs
        self._stats.recoveries_pending = len(self._recovery)
        self._stats.errors = list(self._errors)
        return self._stats

    @property
    def wal(self) -> WriteAheadLog:
        return self._wal

    # --- worker thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        deadline: float | None = None  # when the cached batches must be written
        while True:
            if self._recovery and not self._inbox:
                timeout = 0.0  # background recovery fills the time live documents leave
            elif deadline is not None:
                timeout = min(self.poll_interval, max(0.0, deadline - time.monotonic()))
            elif self._runs or self._inbox:
                timeout = self.poll_interval
            else:
                timeout = None  # idle: nothing open, sleep until a start, flush or close
            self._wake.wait(timeout)
            self._wake.clear()
            while self._inbox:
                item = self._inbox.popleft()
                if item is _CLOSE:
                    self._write_batches()
                    if self._recovery:
                        logger.info(
                            "%d crashed run(s) not recovered before close; the next recovery "
                            "takes them",
                            len(self._recovery),
                        )
                    return
                try:
                    self._dispatch(item)
                except Exception as exc:  # never let the worker die; the log has everything
                    self._record(f"catalog writer: {describe(exc)}")
            if self._pending and deadline is None:
                deadline = time.monotonic() + self.flush_interval
            if deadline is not None and time.monotonic() >= deadline:
                self._write_batches()
                deadline = None
            if self._recovery and not self._inbox:
                self._recover_next()

    def _recover_next(self) -> None:
        path = self._recovery.popleft()
        try:
            result = recover_log(self._client, path)
        except Exception as exc:  # the log stays pending for the next start
            self._record(f"background recovery of {path.name}: {describe(exc)}")
            return
        report(result)
        self._stats.runs_recovered += result.action in (REPLAYED, REPLACED, ALREADY_COMPLETE)
        if self._on_recovered is not None:
            self._on_recovered(result)
        self._progressed()

    def _progressed(self) -> None:
        with self._progress:
            self._runs_settled += 1
            self._progress.notify_all()

    def _dispatch(self, item: tuple) -> None:
        kind = item[0]
        if kind == "doc":
            self._handle(item[1], item[2], item[3])
        elif kind == "flush":
            while self._recovery:  # a flush also waits for the runs recovered in background
                self._recover_next()
            self._write_batches()
            item[1].set()
        elif kind == "abandon":
            self._runs.pop(item[1], None)
            self._pending.discard(item[1])
        elif kind == "repair":
            try:
                self._repair(item[1])
            finally:
                self._settle(item[1])

    def _handle(self, uid: str, name: str, doc: dict) -> None:
        if name == "stop":
            try:
                self._write(uid, name, doc)
            finally:
                self._settle(uid)
        else:
            self._write(uid, name, doc)

    def _write(self, uid: str, name: str, doc: dict) -> None:
        if name == "start":
            # Here, not at import: bluesky-tiled-plugins' writer costs about a second to import,
            # which readers of the catalog (``daqbridge catalog list``) never need.
            from ._tiled_writer import BatchingTiledWriter

            writer = BatchingTiledWriter(self._client, close_streams=self._close_streams)
            run = self._runs[uid] = _Run(writer)
        else:
            run = self._runs.get(uid)
            if run is None:  # abandoned (overflow): the log has it
                return
        if run.broken:
            if name == "stop":
                self._repair(uid)
            return
        try:
            if name in _WRITTEN_AT_ONCE:
                self._wal.sync(uid)
            run.writer(name, doc)
            self._stats.documents += 1
        except Exception as exc:
            run.broken = True
            self._record(
                f"run {uid}: writing its {name} document to the catalog failed: {describe(exc)}"
            )
            if name == "stop":
                self._repair(uid)
            return
        if name == "stop":
            self._runs.pop(uid, None)
            self._pending.discard(uid)
            self._wal.mark_done(uid)
            self._stats.runs_written += 1
        elif name in _BATCHED:
            self._pending.add(uid)

    def _settle(self, uid: str) -> None:
        """Whatever happened to a finished run, this process no longer keeps its log open."""
        self._runs.pop(uid, None)
        self._pending.discard(uid)
        if self._wal.holds(uid):  # neither written nor given up on: an error on the way
            self._unwritten.append(f"{uid} (the writer failed on it; see the errors)")
            self._wal.release(uid)
        self._progressed()

    def _write_batches(self) -> None:
        for uid in list(self._pending):
            run = self._runs.get(uid)
            if run is None or run.broken:
                continue
            self._wal.sync(uid)
            try:
                run.writer.write_batch()
            except Exception as exc:
                run.broken = True
                self._record(
                    f"run {uid}: writing a batch of events to the catalog failed: {describe(exc)}"
                )
        self._pending.clear()

    def _repair(self, uid: str) -> None:
        """Replace whatever the catalog holds of a run by a replay of its (stopped) log."""
        self._runs.pop(uid, None)
        self._pending.discard(uid)
        self._wal.sync(uid)
        result = recover_owned(self._client, self._wal.path_of(uid))
        if result.action in (REPLAYED, REPLACED, ALREADY_COMPLETE):
            self._wal.mark_done(uid)
            self._stats.runs_repaired += 1
        else:
            self._record(
                f"run {uid}: replay from the write-ahead log failed ({result.note}); it stays "
                "pending for the next recovery."
            )
            self._unwritten.append(f"{uid} ({result.note})")
            self._wal.release(uid)

    def _record(self, message: str) -> None:
        logger.error(message)
        self._errors.append(message)
