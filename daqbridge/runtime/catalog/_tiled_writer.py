"""The stock ``TiledWriter``, able to write a run's cached events before its batch is full.

A module of its own so that importing the catalog (to read it) does not import
bluesky-tiled-plugins' writer, with its schema validators (about a second of CPU): only the
catalog writer's worker imports it, at the first start document.
"""

from __future__ import annotations

import warnings
from typing import Any

from bluesky_tiled_plugins import TiledWriter

from ._normalizer import TrustedNormalizer

try:  # private in bluesky-tiled-plugins 2.x; needed only to write a batch before it is full
    from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter
except ImportError:  # pragma: no cover - a future layout: batches then wait for the stop document
    _RunWriter = None


if _RunWriter is not None:

    class _UnstreamedRunWriter(_RunWriter):
        """The library's run writer without the "close stream" requests at the stop document.

        They announce the end of a run to Tiled's streaming cache and webhooks, which the
        in-process server of the embedded catalog does not have: three requests per run that
        did nothing there.
        """

        def _close_stream_tree(self) -> None:
            return None


class BatchingTiledWriter(TiledWriter):
    """A stock ``TiledWriter`` whose cached events can be written before its batch is full.

    ``_factory`` is the library's own, minus the backup callbacks (the write-ahead log is the
    backup), keeping a reference to the run writer so ``write_batch`` can reach its cache.
    """

    def __init__(self, client: Any, *, close_streams: bool = True) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(client, normalizer=TrustedNormalizer)
        self._run_writers: list[Any] = []
        self._close_streams = close_streams

    def _factory(self, name: str, doc: dict):
        if _RunWriter is None or not hasattr(self, "_batch_size"):  # pragma: no cover
            return super()._factory(name, doc)
        run_writer_class = _RunWriter if self._close_streams else _UnstreamedRunWriter
        run_writer = run_writer_class(
            self.client,
            batch_size=self._batch_size,
            max_array_size=self._max_array_size,
            validate=self._validate,
            ignore_errors=self.ignore_errors,
        )
        callback = run_writer
        if self._normalizer:
            callback = self._normalizer(
                patches=self.patches, spec_to_mimetype=self.spec_to_mimetype
            )
            callback.subscribe(run_writer)
        self._run_writers.append(run_writer)
        return [callback], []

    def write_batch(self) -> None:
        """Write every cached event row and stream datum of the run to the catalog now."""
        for run_writer in self._run_writers:
            caches = getattr(run_writer, "_internal_data_cache", None)
            nodes = getattr(run_writer, "_desc_nodes", None)
            if caches is None or nodes is None:  # pragma: no cover - library changed
                return
            for stream, rows in caches.items():
                if rows:
                    run_writer._write_internal_data(rows, desc_node=nodes[stream])
                    rows.clear()
            external = getattr(run_writer, "_external_data_cache", None)
            while external:
                _, datum = external.popitem()
                run_writer._write_external_data(datum)
