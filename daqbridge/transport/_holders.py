"""Which other process holds a port: best effort, bounded, Linux only.

pyserial's ``exclusive=True`` takes an advisory ``flock``; a second open fails with EAGAIN and no
word about who is in the way. The kernel knows: ``/proc/locks`` lists every flock with the pid
and the device:inode it covers. When that does not tell (another namespace, no /proc/locks), a
scan of ``/proc/*/fd`` for the device path still finds processes that have it open. Both are
bounded by a time budget so an error message never hangs on a huge process table.
"""

from __future__ import annotations

import os
import time

_SCAN_BUDGET = 0.25
"""Seconds the /proc/*/fd fallback may spend; the error is more useful a bit vague than late."""


def lock_holder_pid(path: str, *, budget: float = _SCAN_BUDGET) -> int | None:
    """The pid holding an flock on ``path`` (or, failing that, having it open), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    pid = _from_proc_locks(st)
    if pid is not None:
        return pid
    return _from_proc_fds(os.path.realpath(path), budget)


def _from_proc_locks(st: os.stat_result) -> int | None:
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 6949 00:1a:3 0 EOF"; blocked waiters carry an extra "->".
        if len(parts) < 6 or parts[1] == "->":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            found = (int(major, 16), int(minor, 16), int(inode))
            pid = int(parts[4])
        except ValueError:
            continue
        if found == want and pid > 0:
            return pid
    return None


def _from_proc_fds(real: str, budget: float) -> int | None:
    deadline = time.monotonic() + budget
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    mine = False
    for pid in pids:
        if time.monotonic() > deadline:
            break
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # not ours to look at, or gone
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target == real:
                if pid != me:
                    return pid
                mine = True
                break
    return me if mine else None
