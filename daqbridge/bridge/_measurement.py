"""The measurement bridge: free-running legacy streams recorded as event-model runs.

Legacy instruments poll whether or not a plan runs. Without the bridge, what they measure between
plans exists only in legacy loggers' own formats; with it, every measurement becomes an event in
the same catalog as the plans' runs, found with the same tools.

Why it is built this way:

* One stream per (instrument, channel), named ``<instrument>_<channel>``, with one event per
  measurement: the event's value and timestamp ARE the measurement's, nothing is merged,
  resampled or invented (a per-instrument stream would need every channel in every event).
  The measurement's metadata (e.g. the 1830-C's ``OVER`` behind a NaN) goes in a
  ``<key>_metadata`` JSON text field next to the value, so nothing is kept in another format.
* Runs rotate (by time and/or event count) so a stream that runs for weeks never lives in one
  open run: each closed run is complete in the catalog, and a crash loses at most what the
  writer had not logged. A unit change (the meter switched to dBm) also starts a new run, so a
  run's descriptors are true for all of its events.
* Its own thread drains a distributor subscription (queue mode, large bound): instruments never
  wait for the catalog, and drops (the writer stalled long enough to fill the queue) are counted
  and written into the stop document's ``reason`` and the bridge's ``stats()``.
* It imports event-model and the legacy package only: it knows nothing of devices or the
  RunEngine, so it can run in a process without bluesky plans at all.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from event_model import compose_run

from daqbridge.errors import ConfigError
from daqbridge.legacy import (
    ChannelInfo,
    DataDistributor,
    LegacyInstrument,
    LegacyRuntime,
    Measurement,
)

__all__ = ["BRIDGE_PLAN_NAME", "BridgeStats", "MeasurementBridge"]

log = logging.getLogger("daqbridge.bridge.measurement")

BRIDGE_PLAN_NAME = "legacy_stream"
DocumentCallback = Callable[[str, dict], Any]


@dataclass
class BridgeStats:
    """What the bridge has done so far (``MeasurementBridge.stats()``)."""

    runs: list[str] = field(default_factory=list)
    """uids of every run started, oldest first."""
    events: int = 0
    dropped: int = 0
    """Measurements the distributor discarded because the bridge's queue was full."""
    writer_errors: int = 0
    last_writer_error: str | None = None
    current_run: str | None = None
    running: bool = False


class _Stream:
    __slots__ = ("compose_event", "key", "unit")

    def __init__(self, compose_event: Any, key: str, unit: str) -> None:
        self.compose_event = compose_event
        self.key = key
        self.unit = unit


class _Run:
    def __init__(self, bundle: Any, opened: float) -> None:
        self.bundle = bundle
        self.uid: str = bundle.start_doc["uid"]
        self.opened = opened
        self.events = 0
        self.streams: dict[tuple[str, str], _Stream] = {}


def _dtype_of(value: Any) -> tuple[str, list[int]]:
    if isinstance(value, np.ndarray):
        return "array", list(value.shape)
    if isinstance(value, bool | np.bool_):
        return "boolean", []
    if isinstance(value, int | np.integer):
        return "integer", []
    if isinstance(value, float | np.floating):
        return "number", []
    return "string", []


def _event_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


class MeasurementBridge:
    """Records legacy measurements as event-model runs, outside of any plan.

    ``source``: a ``LegacyRuntime`` (its distributor, and its instruments' ChannelInfo for units,
    dtypes and shapes) or a bare ``DataDistributor``. ``writer_callback(name, doc)`` receives
    every document, from the bridge's thread (``catalog.writer`` is the crash-safe choice).
    ``instruments``: ids to record (default: all), or a mapping id -> LegacyInstrument to take
    ChannelInfo from when ``source`` is a bare distributor. ``rotate_every_s`` /
    ``max_events_per_run`` close a run and open the next one (unset: one run until ``stop()``).
    ``metadata`` is merged into every start document.
    """

    def __init__(
        self,
        source: DataDistributor | LegacyRuntime,
        writer_callback: DocumentCallback,
        *,
        instruments: Iterable[str] | Mapping[str, LegacyInstrument] | None = None,
        rotate_every_s: float | None = None,
        max_events_per_run: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        queue_size: int = 100_000,
        name: str = "measurement-bridge",
    ) -> None:
        known: Mapping[str, LegacyInstrument] = {}
        if isinstance(source, LegacyRuntime):
            self._distributor = source.distributor
            known = source.instruments
        elif isinstance(source, DataDistributor):
            self._distributor = source
        else:
            raise ConfigError(
                f"the measurement bridge records a LegacyRuntime or a DataDistributor, got "
                f"{type(source).__name__}.",
                key="source",
                fix="pass legacy_runtime (or legacy_runtime.distributor).",
            )
        if not callable(writer_callback):
            raise ConfigError(
                f"writer_callback must be callable(name, doc), got {writer_callback!r}.",
                key="writer_callback",
                fix="pass catalog.writer (or any document callback).",
            )
        if isinstance(instruments, str):
            raise ConfigError(
                f"instruments takes a list of ids, got the string {instruments!r}.",
                key="instruments",
                fix=f"write instruments=[{instruments!r}].",
            )
        if isinstance(instruments, Mapping):
            self._instruments: Mapping[str, LegacyInstrument] = {**known, **instruments}
            self._ids: list[str] | None = sorted(instruments)
        else:
            self._instruments = known
            self._ids = None if instruments is None else sorted(set(instruments))
        if self._ids is not None and known:
            unknown = [i for i in self._ids if i not in known]
            if unknown:
                raise ConfigError(
                    f"the bridge cannot record {unknown}: no such legacy instrument "
                    f"(known: {sorted(known)}).",
                    key="instruments",
                    fix="list ids of the legacy configuration.",
                )
        if rotate_every_s is not None and (
            isinstance(rotate_every_s, bool)
            or not isinstance(rotate_every_s, int | float)
            or not math.isfinite(rotate_every_s)
            or rotate_every_s <= 0
        ):
            raise ConfigError(
                f"rotate_every_s must be a number of seconds > 0, got {rotate_every_s!r}.",
                key="rotate_every_s",
                fix="e.g. 3600 for one run an hour, or leave it unset.",
            )
        if max_events_per_run is not None and (
            isinstance(max_events_per_run, bool)
            or not isinstance(max_events_per_run, int)
            or max_events_per_run < 1
        ):
            raise ConfigError(
                f"max_events_per_run must be an integer >= 1, got {max_events_per_run!r}.",
                key="max_events_per_run",
                fix="e.g. 100000, or leave it unset.",
            )
        self.writer_callback = writer_callback
        self.rotate_every_s = rotate_every_s
        self.max_events_per_run = max_events_per_run
        self.metadata = dict(metadata or {})
        self.queue_size = queue_size
        self.name = name
        self._sub: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._rotate_now = threading.Event()
        self._run: _Run | None = None
        self._stats = BridgeStats()
        self._dropped_reported = 0
        self._lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and record from now on (the first run opens with the first measurement)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started; build a new bridge")
        self._sub = self._distributor.subscribe(
            maxsize=self.queue_size, name=self.name, instrument_ids=self._ids
        )
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._stats.running = True
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> BridgeStats:
        """Record what is queued, close the open run, stop listening. Measurements published
        after this call are not recorded."""
        if self._thread is None:
            return self.stats()
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("%s did not finish within %.1f s; its run may stay open", self.name, timeout)
        self._stats.running = False
        return self.stats()

    def rotate(self) -> None:
        """Close the current run now; the next measurement opens a new one."""
        self._rotate_now.set()

    def stats(self) -> BridgeStats:
        with self._lock:
            s = BridgeStats(
                **{k: getattr(self._stats, k) for k in BridgeStats.__dataclass_fields__}
            )
            s.runs = list(self._stats.runs)
            s.dropped = self._sub.dropped if self._sub is not None else 0
            return s

    def __enter__(self) -> MeasurementBridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        sub = self._sub
        tick = 0.1 if self.rotate_every_s is None else min(0.1, self.rotate_every_s / 4)
        try:
            while not self._stopping.is_set():
                try:
                    first = sub.get(timeout=tick)
                except queue.Empty:
                    batch: list[Measurement] = []
                else:
                    batch = [first, *sub.drain()]
                for m in batch:
                    self._record(m)
                self._maybe_rotate()
            for m in sub.drain():  # what was queued when stop() was called
                self._record(m)
        except Exception:  # pragma: no cover - a bug here must not pass silently
            log.exception("%s crashed; closing its run", self.name)
        finally:
            self._close_run("bridge stopped")
            sub.close()

    def _maybe_rotate(self) -> None:
        run = self._run
        if run is None:
            self._rotate_now.clear()
            return
        if self._rotate_now.is_set():
            self._rotate_now.clear()
            self._close_run("rotated on request")
        elif self.rotate_every_s is not None and time.time() - run.opened >= self.rotate_every_s:
            self._close_run(f"rotated after {self.rotate_every_s:g} s")

    def _record(self, m: Measurement) -> None:
        run = self._run
        if (
            run is not None
            and self.max_events_per_run is not None
            and run.events >= self.max_events_per_run
        ):
            self._close_run(f"rotated after {self.max_events_per_run} events")
            run = None
        stream = run.streams.get((m.instrument_id, m.channel)) if run is not None else None
        if stream is not None and m.unit and stream.unit and m.unit != stream.unit:
            self._close_run(
                f"unit of {m.instrument_id}/{m.channel} changed from {stream.unit} to {m.unit}"
            )
            run, stream = None, None
        if run is None:
            run = self._open_run()
        if stream is None:
            stream = self._open_stream(run, m)
        key = stream.key
        data = {key: _event_value(m.value), f"{key}_metadata": self._metadata_text(m)}
        doc = stream.compose_event(
            data=data, timestamps={k: m.timestamp for k in data}, time=m.timestamp
        )
        self._emit("event", doc)
        run.events += 1
        with self._lock:
            self._stats.events += 1

    @staticmethod
    def _metadata_text(m: Measurement) -> str:
        if not m.metadata:
            return ""
        try:
            return json.dumps(dict(m.metadata), sort_keys=True, default=str)
        except (TypeError, ValueError):
            return str(dict(m.metadata))

    def _open_run(self) -> _Run:
        ids = self._ids if self._ids is not None else sorted(self._instruments)
        metadata = {
            **self.metadata,
            "plan_name": BRIDGE_PLAN_NAME,
            "plan_type": "bridge",
            "daqbridge_bridge": True,
            "legacy_instruments": list(ids),
            "detectors": list(ids),
            "bridge_run_index": len(self._stats.runs),
        }
        run = _Run(compose_run(metadata=metadata), time.time())
        self._run = run
        with self._lock:
            self._stats.runs.append(run.uid)
            self._stats.current_run = run.uid
        self._emit("start", run.bundle.start_doc)
        return run

    def _open_stream(self, run: _Run, m: Measurement) -> _Stream:
        info = self._channel_info(m)
        key = f"{m.instrument_id}_{m.channel}"
        unit = m.unit or (info.unit if info is not None else "")
        if info is not None:
            dtype, shape = info.dtype, list(info.shape)
            if dtype == "array" and not shape and isinstance(m.value, np.ndarray):
                shape = list(m.value.shape)
        else:
            dtype, shape = _dtype_of(m.value)
        source = f"legacy:{m.instrument_id}/{m.channel}"
        entry: dict[str, Any] = {"source": source, "dtype": dtype, "shape": shape}
        if unit:
            entry["units"] = unit
        data_keys = {
            key: entry,
            f"{key}_metadata": {"source": f"{source}#metadata", "dtype": "string", "shape": []},
        }
        bundle = run.bundle.compose_descriptor(
            data_keys=data_keys,
            name=key,
            object_keys={m.instrument_id: list(data_keys)},
            hints={m.instrument_id: {"fields": [key]}},
        )
        self._emit("descriptor", bundle.descriptor_doc)
        stream = _Stream(bundle.compose_event, key, unit)
        run.streams[(m.instrument_id, m.channel)] = stream
        return stream

    def _channel_info(self, m: Measurement) -> ChannelInfo | None:
        instrument = self._instruments.get(m.instrument_id)
        if instrument is None:
            return None
        try:
            return instrument.channels().get(m.channel)
        except Exception:  # a driver's channels() must not stop the recording
            log.exception("%s: channels() of %s raised", self.name, m.instrument_id)
            return None

    def _close_run(self, why: str) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        # Drops since the previous stop document are reported by this one (a drop that happened
        # between runs belongs to no run; the next one to close says so).
        now_dropped = self._sub.dropped if self._sub is not None else 0
        dropped = now_dropped - self._dropped_reported
        self._dropped_reported = now_dropped
        reason = why
        if dropped:
            reason += (
                f"; {dropped} measurements were dropped since the previous run of this bridge "
                f"(its queue of {self.queue_size} was full: the document writer fell behind)"
            )
            log.warning("%s: run %s: %s", self.name, run.uid, reason)
        stop = run.bundle.compose_stop(exit_status="success", reason=reason)
        self._emit("stop", stop)
        with self._lock:
            self._stats.current_run = None

    def _emit(self, name: str, doc: dict) -> None:
        try:
            self.writer_callback(name, doc)
        except Exception as exc:
            with self._lock:
                self._stats.writer_errors += 1
                self._stats.last_writer_error = f"{name}: {type(exc).__name__}: {exc}"
            if self._stats.writer_errors == 1 or self._stats.writer_errors % 1000 == 0:
                log.exception("%s: the document writer raised on a %s document", self.name, name)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<MeasurementBridge {self.name!r} runs={len(s.runs)} events={s.events} "
            f"dropped={s.dropped} running={s.running}>"
        )
