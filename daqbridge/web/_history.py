"""The runs in the lab's catalog for the panel: search, one run's data, its CSV.

Reads the catalog the worker writes, from this process, read-only (the embedded SQLite catalog
allows that while the worker writes). Search terms become Tiled queries on the start (and stop)
documents, so the catalog does the searching; the CSV is ``daqbridge catalog export``'s own.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError

ALIASES = {
    "plan": "start.plan_name",
    "status": "stop.exit_status",
    "exit_status": "stop.exit_status",
}
MAX_RUNS = 200
MAX_TERMS = 8
_TERM = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
RECOVERED = "incomplete: recovered"
"""How recovery marks a run it closed (daqbridge/catalog/_recovery.py)."""
PLOT_POINTS = 5000


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_search(text: str) -> list[tuple[str, Any]]:
    """``scan_id=3 plan=scan sample=A1`` (a bare number is a scan id, a bare word a plan) as
    (metadata key, value) pairs; anything else is refused, naming the term."""
    terms: list[tuple[str, Any]] = []
    for word in text.split()[: MAX_TERMS + 1]:
        key, sep, value = word.partition("=")
        if not sep:
            key, value = ("scan_id", word) if word.isdigit() else ("plan", word)
        if not _TERM.match(key) or not value or len(value) > 200:
            raise CatalogError(
                f"cannot search for {word!r}.",
                fix="search with key=value terms: scan_id=3, plan=scan, sample=A1, status=abort.",
            )
        path = ALIASES.get(key, key if key.startswith(("start.", "stop.")) else f"start.{key}")
        terms.append((path, _value(value)))
    if len(terms) > MAX_TERMS:
        raise CatalogError(
            f"more than {MAX_TERMS} search terms.",
            fix=f"search with at most {MAX_TERMS} key=value terms: scan_id=3, plan=scan, "
            "sample=A1, status=abort.",
        )
    return terms


def summary(key: str, metadata: dict[str, Any]) -> dict[str, Any]:
    start = metadata.get("start") or {}
    stop = metadata.get("stop") or {}
    reason = stop.get("reason") or ""
    return {
        "uid": start.get("uid", key),
        "scan_id": start.get("scan_id"),
        "plan_name": start.get("plan_name"),
        "time": start.get("time"),
        "sample": start.get("sample"),
        "exit_status": stop.get("exit_status"),
        "reason": reason,
        "recovered": reason.startswith(RECOVERED),
        "num_events": stop.get("num_events") or {},
    }


class History:
    """The catalog opened once, read-only, on first use; reads serialised (the in-process
    Tiled client is not meant for concurrent use)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._catalog: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._catalog is None:
            from daqbridge.catalog import open_catalog

            self._catalog = open_catalog(self.data_dir, readonly=True, recover=False)
        return self._catalog

    def warm(self) -> None:
        """Open the catalog now (seconds: Tiled's imports), not on the first page's search."""
        try:
            with self._lock:
                self._open()
        except Exception:  # noqa: BLE001,S110 - the first search reports it, with its fix
            pass

    def close(self) -> None:
        with self._lock:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

    def search(self, text: str = "", limit: int = 50) -> list[dict[str, Any]]:
        from tiled.queries import Key

        terms = parse_search(text)
        limit = max(1, min(int(limit), MAX_RUNS))
        with self._lock:
            catalog = self._open()
            with catalog.reading():
                node = catalog.client
                for path, value in terms:
                    node = node.search(Key(path) == value)
                items = list(node.items()[-1 : -1 - limit : -1])
        return [summary(key, dict(run.metadata)) for key, run in items]

    def run(self, uid: str) -> dict[str, Any]:
        """Start and stop documents, and the primary stream's scalar columns for the plot."""
        from daqbridge.cli._catalog import _event_columns

        with self._lock:
            catalog = self._open()
            with catalog.reading():
                run = catalog[uid]
                metadata = dict(run.metadata)
                columns: dict[str, list[Any]] = {}
                if "primary" in list(run):
                    found, _ = _event_columns(run["primary"])
                    columns = {name: _listed(values) for name, values in found}
        start = metadata.get("start") or {}
        return {
            "summary": summary(uid, metadata),
            "start": start,
            "stop": metadata.get("stop"),
            "hints": start.get("hints") or {},
            "columns": columns,
        }

    def csv(self, uid: str, stream: str = "primary") -> tuple[str, str]:
        """(file name, text): the CSV of ``daqbridge catalog export``."""
        from daqbridge.cli._catalog import _csv, _event_columns

        with self._lock:
            catalog = self._open()
            with catalog.reading():
                run = catalog[uid]
                full = run.metadata["start"]["uid"]
                if stream not in list(run):
                    raise CatalogError(
                        f"run {full} has no stream {stream!r}.",
                        resource=catalog.where,
                        fix="pick a stream the run has (most runs have 'primary').",
                    )
                columns, _ = _event_columns(run[stream])
        return f"{full[:8]}_{stream}.csv", _csv(columns)


def _listed(values: Any) -> list[Any]:
    out = values.tolist() if hasattr(values, "tolist") else list(values)
    return out[:PLOT_POINTS]
