"""The one error the core adds, kept in the daqbridge hierarchy.

``daqbridge.errors`` has no "set not confirmed" class and is not this package's to change; an
instrument that answers a read-back with another value than was set *reported* something, so the
error is an :class:`InstrumentFault`: code that already handles the v1 drivers' "the meter did not
take W0633" (also an InstrumentFault) handles the async drivers' refusals the same way.
"""

from __future__ import annotations

from typing import Any

from daqbridge.errors import InstrumentFault


class SetNotConfirmed(InstrumentFault):
    """A set command was sent, and the read-back in the same lease disagrees with it."""

    def __init__(self, what: str, *, wanted: Any, got: Any, **kw: Any) -> None:
        self.wanted = wanted
        self.got = got
        super().__init__(what, code=got, **kw)
