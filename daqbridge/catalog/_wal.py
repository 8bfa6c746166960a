"""The write-ahead log: every document reaches a local file before it reaches the catalog.

Why it is built this way:

* One JSON Lines file per run, ``wal/<run uid>.jsonl``, one ``{"name": ..., "doc": ...}`` object
  per line (the format of bluesky's ``JSONLinesWriter``, so its readers work on these files too).
  A file per run makes "this run is safely in the catalog" a single rename, and recovery a matter
  of looking at the files that are left.
* Each line goes out in ONE ``os.write`` on an ``O_APPEND`` descriptor, with no Python buffer in
  between: once ``append`` returns, the document is in the operating system's page cache, which a
  ``kill -9`` of this process cannot lose. Only a power cut or a kernel crash can, and only what was
  not yet fsynced (see ``sync``: the catalog writer fsyncs every run's log before it writes that
  run's documents to Tiled, about once a second, and on every stop document). So the catalog never
  holds a document that the log could lose.
* The process writing a run holds an exclusive ``flock`` on its log until the run is safely in
  the catalog. Recovery (in this or any other process) skips a log it cannot lock: that run is
  alive. The kernel drops the lock when the process dies, however it dies.
* Serialisation uses orjson with native numpy support (arrays, numpy scalars) because it is an
  order of magnitude faster than ``json.dumps`` with a custom encoder, and this runs on the
  RunEngine thread for every document.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daqbridge.errors import CatalogError

logger = logging.getLogger(__name__)

#: A run whose documents may not all be in the catalog yet.
PENDING_SUFFIX = ".jsonl"
#: A run whose stop document was written to the catalog: kept for audit, pruned after some days.
DONE_SUFFIX = ".jsonl.done"
#: A log recovery could not use (no start document): kept for a human to look at.
BAD_SUFFIX = ".jsonl.bad"

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


def _fallback(obj: Any) -> Any:
    """Serialise what orjson cannot: non-contiguous arrays, sets, paths, enums, anything else.

    Documents are meant to be plain JSON, but start metadata often carries a ``Path`` or a set;
    a readable string in the log beats refusing the run.
    """
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    return str(obj)


def encode(name: str, doc: dict) -> bytes:
    """One log line (with its newline) for one document."""
    return orjson.dumps({"name": name, "doc": doc}, default=_fallback, option=_ORJSON_OPTIONS)


class _RunLog:
    """The open log of one run, owned by the process writing the run."""

    __slots__ = ("uid", "path", "fd", "lock", "dirty", "stopped", "linked", "documents")

    def __init__(self, uid: str, path: Path, fd: int) -> None:
        self.uid = uid
        self.path = path
        self.fd = fd
        self.lock = threading.Lock()  # RunEngine thread appends, catalog worker syncs/closes
        self.dirty = False  # bytes written since the last fsync
        self.stopped = False
        self.linked: list[str] = []  # descriptor/resource uids routed to this run
        self.documents = 0


class WriteAheadLog:
    """Appends every document to its run's log file and knows which run every document belongs to.

    ``append`` runs on the RunEngine thread; ``sync``, ``mark_done`` and ``close`` run on the
    catalog worker thread (or at shutdown). A failure to append raises ``CatalogError``: a run whose
    documents cannot be logged is not crash safe, and the scientist must hear it at once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(
                f"cannot create the write-ahead log directory: {exc}.",
                resource=str(self.directory),
                fix="check the permissions of the data directory (--data / DAQBRIDGE_DATA).",
            ) from exc
        self._runs: dict[str, _RunLog] = {}
        self._owner: dict[str, str] = {}  # descriptor / (stream) resource uid -> run uid
        self._guard = threading.Lock()  # protects the two maps above
        self.unrouted = 0  # documents no open run claimed (logged, never raised)

    # --- RunEngine thread ---------------------------------------------------------------------

    def append(self, name: str, doc: dict) -> str | None:
        """Log one document and return the uid of its run (None if no open run claims it)."""
        line = encode(name, doc)
        if name == "start":
            log = self._open(doc["uid"])
        else:
            log = self._route(name, doc)
            if log is None:
                return None
        with log.lock:
            if log.fd < 0:
                self.unrouted += 1
                logger.warning("%s document for run %s arrived after it was closed", name, log.uid)
                return None
            self._write(log, line, name)
            log.dirty = True
            log.documents += 1
            if name == "stop":
                log.stopped = True
                self._fsync(log)  # the run is on disk when the RunEngine reports it finished
        if name == "stop":
            self._forget_links(log)
        return log.uid

    def _open(self, uid: str) -> _RunLog:
        """Create the run's log already locked.

        The file is created and locked under a temporary name, then renamed: a recovery in
        another process must never see an unlocked, still empty log and take the run for a
        crashed one.
        """
        path = self.directory / f"{uid}{PENDING_SUFFIX}"
        if path.exists():
            raise CatalogError(
                f"a write-ahead log for run {uid} already exists: the same run uid was "
                "started twice.",
                resource=str(path),
                fix="start runs with fresh uids; do not re-emit an old start document into the "
                "live writer (Catalog.recover() imports logged runs).",
            )
        creating = self.directory / f".{uid}.{os.getpid()}.creating"
        created = False
        try:
            fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            created = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(creating, path)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            if created:
                # Best effort: where the log could not be written, removing it may fail too (a
                # read-only file system refuses even the unlink), and that second error must
                # not hide the first.
                with contextlib.suppress(OSError):
                    creating.unlink()
            raise CatalogError(
                f"cannot create the write-ahead log of run {uid}: {exc.strerror or exc}; the "
                "run is not recorded.",
                resource=str(path),
                fix=_unwritable_fix(exc),
            ) from exc
        log = _RunLog(uid, path, fd)
        with self._guard:
            self._runs[uid] = log
        return log

    def _route(self, name: str, doc: dict) -> _RunLog | None:
        if name in ("descriptor", "stop", "resource", "stream_resource"):
            run_uid = doc.get("run_start")
            if run_uid is None and name in ("resource", "stream_resource"):
                run_uid = self._only_open_run()  # run_start is optional in these documents
        elif name in ("event", "event_page", "stream_datum"):
            run_uid = self._owner.get(doc.get("descriptor", ""))
        elif name == "datum":
            run_uid = self._owner.get(doc.get("resource", ""))
        elif name == "datum_page":
            resource = doc.get("resource")
            run_uid = self._owner.get(resource[0] if isinstance(resource, list) else resource or "")
        else:
            run_uid = None
        log = self._runs.get(run_uid) if run_uid else None
        if log is None:
            self.unrouted += 1
            logger.warning("%s document belongs to no open run; not logged", name)
            return None
        if name in ("descriptor", "resource", "stream_resource"):
            with self._guard:
                self._owner[doc["uid"]] = log.uid
            log.linked.append(doc["uid"])
        return log

    def _only_open_run(self) -> str | None:
        open_runs = [uid for uid, log in self._runs.items() if not log.stopped]
        return open_runs[-1] if open_runs else None

    def _forget_links(self, log: _RunLog) -> None:
        with self._guard:
            for uid in log.linked:
                self._owner.pop(uid, None)
        log.linked.clear()

    def holds(self, uid: str) -> bool:
        """True while this log keeps the run's file open (and locked)."""
        return uid in self._runs

    @property
    def waiting_runs(self) -> int:
        """Runs whose stop document is logged but which are not yet safely in the catalog."""
        return sum(1 for log in list(self._runs.values()) if log.stopped)

    @staticmethod
    def _write(log: _RunLog, line: bytes, name: str) -> None:
        view = memoryview(line)
        try:
            while view:
                written = os.write(log.fd, view)
                view = view[written:]
        except OSError as exc:
            raise CatalogError(
                f"cannot append the {name} document of run {log.uid} to its write-ahead log: "
                f"{exc.strerror or exc}; the run is no longer crash safe.",
                resource=str(log.path),
                fix=_unwritable_fix(exc) + " Then check the run with 'daqbridge catalog show'.",
            ) from exc

    # --- catalog worker thread ----------------------------------------------------------------

    def sync(self, uid: str) -> None:
        """fsync the run's log if anything was written since the last fsync."""
        log = self._runs.get(uid)
        if log is None or not log.dirty:
            return
        with log.lock:
            if log.fd >= 0:
                self._fsync(log)

    def _fsync(self, log: _RunLog) -> None:
        log.dirty = False  # cleared first: a write racing the fsync sets it again
        try:
            os.fsync(log.fd)
        except OSError as exc:  # reported, not raised: the lines are still in the page cache
            logger.error("fsync of %s failed: %s", log.path, exc)

    def sync_all(self) -> None:
        for uid in list(self._runs):
            self.sync(uid)

    def is_stopped(self, uid: str) -> bool:
        log = self._runs.get(uid)
        return bool(log and log.stopped)

    def path_of(self, uid: str) -> Path:
        log = self._runs.get(uid)
        return log.path if log else self.directory / f"{uid}{PENDING_SUFFIX}"

    def mark_done(self, uid: str) -> None:
        """The run is safely in the catalog: rename its log to ``.done`` and release the lock.

        Renamed rather than deleted so an auditor can still compare log and catalog for a while
        (``prune_done`` removes old ones). If the rename is lost in a power cut, recovery finds
        the stop document in the catalog and only renames the file then.
        """
        with self._guard:
            log = self._runs.pop(uid, None)
        if log is None:
            return
        with log.lock:
            try:
                os.replace(log.path, log.path.with_name(f"{uid}{DONE_SUFFIX}"))
            except OSError as exc:
                logger.error("cannot mark %s done: %s", log.path, exc)
            self._close_fd(log)
        self._forget_links(log)

    def release(self, uid: str) -> None:
        """Close a run's log without marking it done: recovery will take it up later."""
        with self._guard:
            log = self._runs.pop(uid, None)
        if log is None:
            return
        with log.lock:
            self._close_fd(log)
        self._forget_links(log)

    def close(self) -> None:
        """Release every log still open; their runs are recovered on the next start."""
        with self._guard:
            logs = list(self._runs.values())
            self._runs.clear()
            self._owner.clear()
        for log in logs:
            with log.lock:
                if log.dirty and log.fd >= 0:
                    self._fsync(log)
                self._close_fd(log)

    @staticmethod
    def _close_fd(log: _RunLog) -> None:
        if log.fd >= 0:
            try:
                os.close(log.fd)
            finally:
                log.fd = -1

    @property
    def open_runs(self) -> list[str]:
        return list(self._runs)


def _unwritable_fix(exc: OSError) -> str:
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            "the data directory is read-only here: choose a writable one with --data or "
            "DAQBRIDGE_DATA (or fix its permissions)."
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space in the data directory."
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "this process has too many files open: raise its limit (ulimit -n)."
    return "check the data directory (disk, permissions)."


# --- reading logs back (recovery, tools) --------------------------------------------------------


@dataclass
class LogContents:
    """The documents of one log file, and what was wrong with it."""

    path: Path
    documents: list[tuple[str, dict]] = field(default_factory=list)
    damaged_lines: int = 0  # lines that are not a JSON document (a torn last write)
    torn_tail: bool = False  # the last line has no newline: cut short by a crash

    @property
    def start(self) -> dict | None:
        for name, doc in self.documents:
            if name == "start":
                return doc
        return None

    @property
    def stop(self) -> dict | None:
        for name, doc in reversed(self.documents):
            if name == "stop":
                return doc
        return None


def read_log(path: Path) -> LogContents:
    """Read a log, skipping a torn last line instead of failing on it.

    A process killed in the middle of ``os.write`` of a large document can leave half a line;
    everything before it is intact, because every earlier line ended with its newline.
    """
    contents = LogContents(Path(path))
    data = Path(path).read_bytes()
    if data and not data.endswith(b"\n"):
        contents.torn_tail = True
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
            contents.documents.append((item["name"], item["doc"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            contents.damaged_lines += 1
    return contents


def pending_logs(directory: Path) -> list[Path]:
    """Logs of runs that may not be completely in the catalog, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if not path.name.endswith(PENDING_SUFFIX):
            continue
        try:
            found.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:  # finished and renamed by its writer meanwhile
            continue
    return [path for _, _, path in sorted(found)]


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Take the run's log lock without waiting; yields False if a live process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def rename_log(path: Path, suffix: str) -> Path:
    """Rename ``<uid>.jsonl`` to ``<uid><suffix>`` (done or bad)."""
    target = path.with_name(path.name[: -len(PENDING_SUFFIX)] + suffix)
    os.replace(path, target)
    return target


def prune_done(directory: Path, older_than_days: float) -> int:
    """Delete ``.done`` logs older than the given age; returns how many went."""
    directory = Path(directory)
    if older_than_days < 0 or not directory.is_dir():
        return 0
    limit = time.time() - older_than_days * 86400.0
    removed = 0
    for path in directory.glob(f"*{DONE_SUFFIX}"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed
