"""The status of a trigger with nothing to start: done when it is returned.

A wire detector whose every ``read()`` asks the instrument (the 1830-C, the MaiTai, a SCPI
instrument) has nothing to arm, but bluesky's plans trigger every Triggerable before reading it.
An ``AsyncStatus`` is a task: the RunEngine's ``wait`` then takes several turns of the event loop
to see it finish, a tenth of a millisecond per point for nothing. This status is finished at
birth, so the wait returns at once; it is awaitable (ophyd-async callers) and has a ``wait()``
(ophyd v1 callers), like the statuses it stands in for.
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
