"""TiledWriter's document normaliser without a second JSON-schema check of every event.

Why: ``RunNormalizer.emit`` validates every document against the event-model schema, about
0.15-0.25 ms per event on these machines, and the worker thread spends it under the GIL, i.e.
taken from the RunEngine. Events reaching the catalog writer were already validated by the
RunEngine that emitted them (and replayed ones are the same documents, read back from the log),
so the check is skipped for the per-point documents only. Start, descriptor, stop and
(stream) resource documents, a handful per run, are still validated.
"""

from __future__ import annotations

from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
from event_model import DocumentNames, schema_validators

_PER_POINT = frozenset(
    {
        DocumentNames.event,
        DocumentNames.event_page,
        DocumentNames.stream_datum,
        DocumentNames.datum,
        DocumentNames.datum_page,
    }
)


class TrustedNormalizer(RunNormalizer):
    """``RunNormalizer`` (same patches, same output) that trusts per-point documents."""

    def emit(self, name, doc):
        if name not in _PER_POINT:
            schema_validators[name].validate(doc)
        self.dispatcher.process(name, doc)
