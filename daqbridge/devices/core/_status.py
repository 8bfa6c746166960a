"""The status of an operation finished when it is returned.

The wire detectors (the 1830-C, the MaiTai, a SCPI instrument) have no trigger at all: their
``read()`` asks the instrument, and bluesky skips a point's trigger and wait for a device that is
not Triggerable. What still needs a status that is done at birth is a ``trigger()`` that must
exist but has nothing left to do (the shadow recorder's echo of a twin whose trigger raised). An
``AsyncStatus`` is a task: the RunEngine's ``wait`` then takes several turns of the event loop to
see it finish. This status is finished at birth, so the wait returns at once; it is awaitable
(ophyd-async callers) and has a ``wait()`` (ophyd v1 callers), like the statuses it stands in for.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


class Completed:
    """A finished, successful status (bluesky's ``Status`` protocol)."""

    __slots__ = ()

    done = True
    success = True

    def add_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    def exception(self, timeout: float | None = 0.0) -> None:
        return None

    def wait(self, timeout: float | None = None) -> None:
        return None

    def __await__(self) -> Generator[Any, None, None]:
        return None
        yield  # a generator that finishes without suspending

    def __repr__(self) -> str:
        return "Completed(done=True, success=True)"


COMPLETED = Completed()
"""The one instance every nothing-to-start trigger returns (it holds no state)."""
