"""What the catalog's SQLite files say when they refuse: locks, their holders, short reasons.

Why it is built this way:

* The embedded catalog is two SQLite files (``catalog.db``, ``storage.sqlite``) shared by every
  process that reads or writes the data directory. A writer holds a file's lock for the few
  milliseconds of a commit; a reader that meets it must wait, not fail. Tiled's metadata
  connections (aiosqlite) waited 5 s, but its table connections (ADBC) did not wait at all, so a
  read of a run's events failed with "database is locked" about once in 200 reads while another
  process wrote. Every connection to either file now waits the same ``lock_timeout``.
* A lock held longer than that belongs to another process, and the message says which one:
  SQLite takes POSIX locks, and Linux lists them with their pid in ``/proc/locks``. It never says
  "there is no catalog" (a locked file is not a missing one) and never suggests deleting a file.
  Nothing here opens the locked file to ask (``F_GETLK``): closing any descriptor of a file drops
  every POSIX lock this process holds on it, including those of its own SQLite connections.
* SQLAlchemy's errors carry the statement and its parameters (a whole start document), and a
  failed schema migration carries the subprocess's Rich traceback; a scientist needs the
  database's one-line reason.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError

#: Seconds a read or write waits for another process's lock on a catalog file (SQLite's own
#: default, which Tiled's metadata connections already used).
LOCK_TIMEOUT = 5.0

_LOCKED_WORDS = ("database is locked", "database table is locked")
_READ_ONLY_WORDS = ("readonly database", "read-only file system")
_DRIVERS = ("sqlite3", "adbc_driver_manager")  # whose errors are the root cause, without SQL
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning)\b.*:")


class CatalogLocked(CatalogError):
    """A catalog file stayed locked by another process for longer than the lock timeout."""

    def __init__(self, path: Path, *, waited: float, holder: tuple[int, str] | None) -> None:
        self.path = Path(path)
        self.waited = waited
        self.pid = holder[0] if holder else None
        if holder is None:
            who = "another process"
            fix = (
                f"find the program that has {self.path} open for writing (`fuser {self.path}`), "
                "wait for it to finish or stop it if it hangs; the catalog itself is fine."
            )
        elif holder[0] == os.getpid():
            who = f"this process ({holder[1]})"
            fix = "finish or close the other catalog connection of this program first."
        else:
            who = f"process {holder[0]} ({holder[1]})"
            fix = (
                f"wait for process {holder[0]} to finish its write, or stop it if it hangs; "
                "the catalog itself is fine."
            )
        super().__init__(
            f"{self.path.name} is locked by {who}, which has held its write lock for more than "
            f"{waited:g} s.",
            resource=str(self.path),
            fix=fix,
        )


def lock_holder(path: Path) -> tuple[int, str] | None:
    """(pid, command line) of a process holding a lock on ``path``, as /proc/locks tells.

    Write locks first (a reader's shared lock does not keep other readers out). None when the
    system does not say (no /proc, OFD locks without a pid, the holder just let go).
    """
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: list[tuple[bool, bool, int]] = []  # (exact device, write lock, pid)
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6:  # "->": a waiter, not a holder
            continue
        target = fields[5]
        if target != exact and target.rsplit(":", 1)[-1] != str(st.st_ino):
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if pid > 0:
            found.append((target == exact, fields[3] == "WRITE", pid))
    if not found:
        return None
    _, _, pid = max(found, key=lambda f: (f[0], f[1], f[2] != os.getpid()))
    return pid, _command_of(pid)


def _command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "command unknown"
    # One line whatever the arguments hold (``python -c`` scripts have newlines).
    text = " ".join(raw.decode(errors="replace").replace("\0", " ").split())
    return (text[:77] + "...") if len(text) > 80 else (text or "command unknown")


def locked_error(files: list[Path], waited: float) -> CatalogLocked:
    """The error for a lock met on one of ``files``: the one someone holds, else the first."""
    for path in files:
        holder = lock_holder(path)
        if holder is not None:
            return CatalogLocked(path, waited=waited, holder=holder)
    return CatalogLocked(files[0], waited=waited, holder=None)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        orig = getattr(item, "orig", None)  # SQLAlchemy's wrapper of the driver's error
        todo.extend([orig if isinstance(orig, BaseException) else None])
        todo.extend([item.__cause__, item.__context__])


def is_locked(exc: BaseException) -> bool:
    """True if a SQLite lock (``SQLITE_BUSY``/``SQLITE_LOCKED``) is behind ``exc``."""
    for item in _chain(exc):
        code = getattr(item, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return True
        text = str(item).lower()
        if any(word in text for word in _LOCKED_WORDS):
            return True
    return False


def is_read_only(exc: BaseException) -> bool:
    """True if a read-only file or file system is behind ``exc``."""
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return True
        text = str(item).lower()
        if any(word in text for word in _READ_ONLY_WORDS):
            return True
    return False


def describe(exc: BaseException, limit: int = 200) -> str:
    """``Type: reason`` of the error at the root of ``exc``, on one line, without SQL."""
    root = exc
    for item in _chain(exc):
        if item is not exc and type(item).__module__.split(".")[0] in _DRIVERS:
            root = item
            break
    lines = [
        line.strip(" │╭╮╰╯─")
        for line in str(root).splitlines()
        if line.strip() and not line.lstrip().startswith(("[SQL:", "[parameters:", "(Background"))
    ]
    # A failed migration subprocess hands over its whole traceback: its last error line says it.
    error_lines = [line for line in lines if _ERROR_LINE.match(line)]
    text = (error_lines[-1] if len(lines) > 1 and error_lines else lines[0]) if lines else ""
    if not _ERROR_LINE.match(text):
        text = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _busy_timeout_listener(milliseconds: int) -> Callable[[Any, Any], None]:
    """One listener object per timeout, so ``event.contains`` recognises it when asked again."""

    def set_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {milliseconds}")
            cursor.fetchall()
        finally:
            cursor.close()

    return set_busy_timeout


def wait_for_locks(target: Any, timeout: float) -> None:
    """Make every new connection of ``target`` (a SQLAlchemy engine or pool) wait for locks."""
    from sqlalchemy import event

    listener = _busy_timeout_listener(max(0, round(timeout * 1000)))
    if not event.contains(target, "connect", listener):
        event.listen(target, "connect", listener)
