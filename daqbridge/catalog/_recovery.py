"""Putting logged runs into the catalog after a crash.

Why it is built this way:

* The write-ahead log is the truth; the catalog is a copy. A run the catalog holds only in part
  (a crash between two batch writes) is deleted from the catalog and replayed whole from its log,
  rather than patched: ``TiledWriter`` refuses a start document whose uid exists (HTTP 409) and
  keeps its per-run state only in memory, so resuming a half-written run would mean
  reverse-engineering what reached the tables. Delete-and-replay has one code path and is
  idempotent: a recovery interrupted by a second crash just runs again.
* The catalog can never hold MORE than the log: the writer fsyncs a run's log before each Tiled
  write of that run. So replaying the log never loses an event the catalog had.
* A run without a stop document (``kill -9`` mid-run, power cut) gets a synthesised stop with
  ``exit_status="fail"`` and ``reason="incomplete: recovered after crash (N events)"``, so every
  reader (``daqbridge catalog list``, databroker, Tiled web UI) sees it as incomplete, while all
  events logged before the crash are there to read.
* A log locked by a live process is a run being written right now: it is left alone.
* The HDF5 files a recovered run announced (StreamResource/Resource documents) were written by
  the process that died, in SWMR mode: their "open for writing" mark is cleared (``_swmr``), so
  they open with plain ``h5py.File(path, "r")`` and in any HDF5 program, not only as SWMR
  readers. Only logs claimed from a dead process get this; a live writer's files are its own.
* A failure is summarised in one line (``_sqlite.describe``): SQLAlchemy's messages carry the
  whole statement and its parameters, which a scientist running ``catalog recover`` cannot use.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ._sqlite import describe
from ._swmr import clear_write_mark
from ._wal import (
    BAD_SUFFIX,
    DONE_SUFFIX,
    LogContents,
    claim,
    pending_logs,
    read_log,
    rename_log,
)

logger = logging.getLogger(__name__)

#: ``RecoveredRun.action`` values.
REPLAYED = "replayed"  # the run was not in the catalog; written whole from the log
REPLACED = "replaced"  # the catalog held part of the run; replaced by the whole log
ALREADY_COMPLETE = "already complete"  # the catalog has the stop document; log marked done
IN_PROGRESS = "in progress"  # a live process holds the log: left alone
FAILED = "failed"  # writing to the catalog failed; the log stays for the next attempt
UNREADABLE = "unreadable"  # the log has no start document; renamed .bad for a human


@dataclass(frozen=True)
class RecoveredRun:
    """What recovery did with one run's write-ahead log."""

    uid: str | None
    action: str
    events: int  # events in the log (all streams)
    had_stop: bool  # the log held the run's own stop document
    exit_status: str | None  # as written to the catalog (synthesised "fail" if no stop)
    log: Path
    scan_id: int | None = None
    plan_name: str | None = None
    note: str = ""


def count_events(contents: LogContents) -> Counter:
    """Events per stream name, from events, event pages and stream datums of the log."""
    stream_of: dict[str, str] = {}
    counts: Counter = Counter()
    datum_counts: Counter = Counter()
    for name, doc in contents.documents:
        if name == "descriptor":
            stream_of[doc.get("uid", "")] = doc.get("name", "primary")
        elif name == "event":
            counts[stream_of.get(doc.get("descriptor", ""), "primary")] += 1
        elif name == "event_page":
            stream = stream_of.get(doc.get("descriptor", ""), "primary")
            counts[stream] += len(doc.get("seq_num", ()))
        elif name == "stream_datum":
            stream = stream_of.get(doc.get("descriptor", ""), "primary")
            seq = doc.get("seq_nums") or {}
            datum_counts[stream] += max(0, int(seq.get("stop", 0)) - int(seq.get("start", 0)))
    # A stream read only through stream datums (ophyd-async style) counts its datum rows.
    for stream, n in datum_counts.items():
        if not counts.get(stream):
            counts[stream] = n
    return counts


def synthesize_stop(contents: LogContents) -> dict:
    """The stop document of a run that never wrote one: marked incomplete, failed."""
    start = contents.start or {}
    counts = count_events(contents)
    total = sum(counts.values())
    times = [d["time"] for _, d in contents.documents if isinstance(d.get("time"), int | float)]
    last_time = float(max(times, default=time.time()))
    return {
        "uid": str(uuid.uuid4()),
        "run_start": start.get("uid"),
        "time": last_time,
        "exit_status": "fail",
        "reason": f"incomplete: recovered after crash ({total} events)",
        "num_events": dict(counts),
    }


def new_tiled_writer(client: Any) -> Any:
    """A stock TiledWriter at its default batch size, without its deprecation chatter.

    Its normaliser skips the per-event schema check (see ``_normalizer``): a 100 000-event run
    replays in seconds instead of tens of seconds.
    """
    from bluesky_tiled_plugins import TiledWriter

    from ._normalizer import TrustedNormalizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return TiledWriter(client, normalizer=TrustedNormalizer)


def run_node(client: Any, uid: str) -> Any:
    """The run's node by exact key: the plain Container lookup, without the partial-uid and
    scan_id guessing of ``CatalogOfBlueskyRuns.__getitem__``. Raises KeyError if absent."""
    from tiled.client.container import Container

    return Container.__getitem__(client, uid)


def run_in_catalog(client: Any, uid: str) -> dict | None:
    """The run's metadata if the catalog has a node for it, else None."""
    try:
        return dict(run_node(client, uid).metadata)
    except KeyError:
        return None


def delete_run(client: Any, uid: str) -> None:
    """Remove a partial run (its tables in storage.sqlite too; external files stay on disk)."""
    run_node(client, uid).delete(recursive=True, external_only=False)


def replay(client: Any, contents: LogContents) -> tuple[str, str | None]:
    """Write a logged run into the catalog whole; returns (action, exit_status written).

    Raises whatever the catalog raises; the caller decides whether the log stays.
    """
    start = contents.start
    assert start is not None
    uid = start["uid"]
    existing = run_in_catalog(client, uid)
    if existing is not None and existing.get("stop"):
        return ALREADY_COMPLETE, existing["stop"].get("exit_status")
    action = REPLAYED
    if existing is not None:
        delete_run(client, uid)
        action = REPLACED
    stop = contents.stop
    documents = [(n, d) for n, d in contents.documents if n != "stop"]
    if stop is None:
        stop = synthesize_stop(contents)
    writer = new_tiled_writer(client)
    for name, doc in documents:
        writer(name, doc)
    writer("stop", stop)
    return action, stop.get("exit_status")


def _summary_fields(contents: LogContents) -> dict:
    start = contents.start or {}
    return {
        "scan_id": start.get("scan_id"),
        "plan_name": start.get("plan_name"),
        "events": sum(count_events(contents).values()),
        "had_stop": contents.stop is not None,
    }


def _notes(contents: LogContents) -> list[str]:
    notes = []
    if contents.damaged_lines:
        notes.append(f"{contents.damaged_lines} damaged line(s) skipped (torn write at the crash)")
    return notes


def camera_files(contents: LogContents) -> list[Path]:
    """The local HDF5 files the run's (stream) resource documents announced."""
    files: dict[Path, None] = {}
    for name, doc in contents.documents:
        if name == "stream_resource" and "hdf5" in str(doc.get("mimetype", "")).lower():
            uri = urlparse(str(doc.get("uri", "")))
            if uri.scheme == "file":
                files[Path(unquote(uri.path))] = None
        elif name == "resource" and "HDF5" in str(doc.get("spec", "")).upper():
            files[Path(str(doc.get("root", "")), str(doc.get("resource_path", "")))] = None
    return list(files)


def _release_camera_files(contents: LogContents) -> list[str]:
    """Clear the write mark a killed SWMR writer left in the run's HDF5 files; notes."""
    notes = []
    for path in camera_files(contents):
        if not path.is_file():
            continue
        try:
            if clear_write_mark(path):
                notes.append(f"{path.name}: HDF5 open-for-write mark cleared")
        except (OSError, ValueError) as exc:
            notes.append(
                f"{path.name}: HDF5 write mark not cleared ({exc}); open it with "
                "h5py.File(path, 'r', swmr=True)"
            )
    return notes


def report(result: RecoveredRun) -> None:
    """Log what recovery did with one run (nothing for a run another process is writing)."""
    if result.action == IN_PROGRESS:
        return
    level = logging.ERROR if result.action == FAILED else logging.WARNING
    logger.log(
        level,
        "recovered run %s from %s: %s (%d events, exit_status %s) %s",
        result.uid,
        result.log.name,
        result.action,
        result.events,
        result.exit_status,
        result.note,
    )


def recover_log(client: Any, path: Path) -> RecoveredRun:
    """Recover one log file, unless a live process holds it."""
    path = Path(path)
    with claim(path) as owned:
        if not owned:
            return RecoveredRun(
                uid=path.name.removesuffix(".jsonl"),
                action=IN_PROGRESS,
                events=0,
                had_stop=False,
                exit_status=None,
                log=path,
                note="a live process is writing this run",
            )
        contents = read_log(path)
        # The process that wrote this log is dead (its lock is gone), and so is the writer of
        # the run's HDF5 files.
        files = _release_camera_files(contents)
        result = _recover_claimed(client, path, contents)
    if files:
        note = "; ".join(n for n in [result.note, *files] if n)
        result = dataclasses.replace(result, note=note)
    return result


def recover_owned(client: Any, path: Path) -> RecoveredRun:
    """Recover a log this process already holds the lock of (the writer repairing a run)."""
    return _recover_claimed(client, Path(path), read_log(path), rename=False)


def _recover_claimed(
    client: Any, path: Path, contents: LogContents, *, rename: bool = True
) -> RecoveredRun:
    fields = _summary_fields(contents)
    notes = _notes(contents)
    start = contents.start
    if start is None or not start.get("uid"):
        target = path
        if rename:
            try:
                target = rename_log(path, BAD_SUFFIX)
            except OSError as exc:
                notes.append(f"log not renamed .bad ({exc.strerror or exc})")
        return RecoveredRun(
            uid=None,
            action=UNREADABLE,
            exit_status=None,
            log=target,
            note="; ".join([*notes, "no start document: nothing to put in the catalog"]),
            **fields,
        )
    uid = start["uid"]
    try:
        action, exit_status = replay(client, contents)
    except Exception as exc:  # any catalog failure: keep the log for the next attempt
        logger.debug("recovery of run %s from %s failed", uid, path, exc_info=True)
        return RecoveredRun(
            uid=uid,
            action=FAILED,
            exit_status=None,
            log=path,
            note="; ".join([*notes, describe(exc)]),
            **fields,
        )
    target = path
    if rename:
        try:
            target = rename_log(path, DONE_SUFFIX)
        except OSError as exc:  # in the catalog all the same; the next recovery finds it complete
            notes.append(f"log not renamed .done ({exc.strerror or exc})")
    if action != ALREADY_COMPLETE and not fields["had_stop"]:
        notes.append("no stop document in the log: marked incomplete (exit_status 'fail')")
    return RecoveredRun(
        uid=uid,
        action=action,
        exit_status=exit_status,
        log=target,
        note="; ".join(notes),
        **fields,
    )


def recover_all(client: Any, directory: Path) -> list[RecoveredRun]:
    """Recover every pending log in ``directory`` (oldest first)."""
    return [recover_log(client, path) for path in pending_logs(directory)]
