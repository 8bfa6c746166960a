"""bluesky-tiled-plugins' run writer, able to write a run's cached events before its batch is full.

A module of its own so that importing the catalog (to read it) does not import
bluesky-tiled-plugins' writer, with its schema validators (about a second of CPU): only a
writable catalog imports it.

Nothing public in bluesky-tiled-plugins writes a run's cached rows before its batch is full
(``TiledWriter`` writes them when 10 000 have gathered or at the stop document), so this module
uses its private per-run writer, ``_RunWriter``. It is composed here with the public
``event_model.RunRouter`` and ``RunNormalizer``, exactly as ``TiledWriter`` composes it, so no
private name of ``TiledWriter`` itself is needed. A release that renames what is left would make
the catalog silently hold each run back until its stop document; :func:`check_library` names the
missing pieces instead, and a writable catalog calls it when it opens.
"""

from __future__ import annotations

import functools
import inspect
from importlib import metadata
from typing import Any

from bluesky_tiled_plugins.writing import tiled_writer as library
from event_model import RunRouter

from daqbridge.errors import CatalogError

from ._normalizer import TrustedNormalizer

#: The distribution whose private names are relied on, and the release they were checked on.
LIBRARY = "bluesky-tiled-plugins"
CHECKED_ON = "2.0.12"

_RUN_WRITER = "_RunWriter"
#: Methods of ``_RunWriter`` called (or, for ``_close_stream_tree``, overridden) here.
_RUN_WRITER_METHODS = ("_write_internal_data", "_write_external_data", "_close_stream_tree")
#: Its per-run caches that ``write_batch`` empties.
_RUN_WRITER_STATE = ("_internal_data_cache", "_desc_nodes", "_external_data_cache")
#: Its constructor's arguments, passed as ``TiledWriter`` passes them.
_RUN_WRITER_ARGUMENTS = ("batch_size", "max_array_size", "validate", "ignore_errors")
#: The module's defaults that ``TiledWriter`` gives its run writers, given here the same way.
_DEFAULTS = ("BATCH_SIZE", "MAX_ARRAY_SIZE")


def missing_private_names() -> list[str]:
    """The private names of bluesky-tiled-plugins this module needs that the installed release
    lacks (empty when all are there)."""
    where = library.__name__
    missing = [f"{where}.{name}" for name in _DEFAULTS if not hasattr(library, name)]
    run_writer = getattr(library, _RUN_WRITER, None)
    if not isinstance(run_writer, type):
        return [*missing, f"{where}.{_RUN_WRITER}"]
    missing += [
        f"{where}.{_RUN_WRITER}.{name}"
        for name in _RUN_WRITER_METHODS
        if not callable(getattr(run_writer, name, None))
    ]
    params = inspect.signature(run_writer).parameters
    missing += [
        f"{where}.{_RUN_WRITER}({name}=...)" for name in _RUN_WRITER_ARGUMENTS if name not in params
    ]
    try:
        probe = run_writer(None)  # its constructor only stores the client
    except Exception as exc:
        missing.append(f"{where}.{_RUN_WRITER}(client) (constructing one failed: {exc})")
    else:
        missing += [
            f"{where}.{_RUN_WRITER}().{name}"
            for name in _RUN_WRITER_STATE
            if not hasattr(probe, name)
        ]
    return missing


def check_library() -> None:
    """Raise ``CatalogError`` if the installed bluesky-tiled-plugins lacks a name this writer uses.

    Cheap (no I/O): a writable catalog calls it each time it opens, before any document comes.
    """
    missing = missing_private_names()
    if not missing:
        return
    try:
        installed = metadata.version(LIBRARY)
    except metadata.PackageNotFoundError:
        installed = "(version unknown)"
    raise CatalogError(
        f"{LIBRARY} {installed} lacks {', '.join(missing)}, which the catalog writer uses to put "
        "a run's events in the catalog while the run goes on; without them runs would reach the "
        "catalog only at their stop document, so the catalog was not opened for writing.",
        resource=LIBRARY,
        fix=f"install the release daqbridge was checked on: .venv/bin/pip install "
        f"'{LIBRARY}=={CHECKED_ON}' (and report the new release so daqbridge can follow it).",
    )


@functools.cache
def _unstreamed(run_writer: type) -> type:
    class UnstreamedRunWriter(run_writer):
        """The library's run writer without the "close stream" requests at the stop document.

        They announce the end of a run to Tiled's streaming cache and webhooks, which the
        in-process server of the embedded catalog does not have: three requests per run that
        did nothing there.
        """

        def _close_stream_tree(self) -> None:
            return None

    return UnstreamedRunWriter


class BatchingTiledWriter:
    """``TiledWriter`` for one run (same normaliser, same run writer, same batch) whose cached
    events can be written before its batch is full (``write_batch``).

    No backup callbacks: the write-ahead log is the backup.
    """

    def __init__(self, client: Any, *, close_streams: bool = True) -> None:
        self.client = client.include_data_sources()  # as TiledWriter does
        run_writer = getattr(library, _RUN_WRITER)
        self._run_writer_class = run_writer if close_streams else _unstreamed(run_writer)
        self._run_writers: list[Any] = []
        self._router = RunRouter([self._run_callbacks])

    def _run_callbacks(self, name: str, doc: dict) -> tuple[list[Any], list[Any]]:
        run_writer = self._run_writer_class(
            self.client,
            batch_size=library.BATCH_SIZE,
            max_array_size=library.MAX_ARRAY_SIZE,
            validate=False,
            ignore_errors=[],
        )
        normalizer = TrustedNormalizer()
        normalizer.subscribe(run_writer)
        self._run_writers.append(run_writer)
        return [normalizer], []

    def __call__(self, name: str, doc: dict) -> None:
        self._router(name, doc)

    def write_batch(self) -> None:
        """Write every cached event row and stream datum of the run to the catalog now."""
        for run_writer in self._run_writers:
            for stream, rows in run_writer._internal_data_cache.items():
                if rows:
                    run_writer._write_internal_data(rows, desc_node=run_writer._desc_nodes[stream])
                    rows.clear()
            external = run_writer._external_data_cache
            while external:
                _, datum = external.popitem()
                run_writer._write_external_data(datum)
