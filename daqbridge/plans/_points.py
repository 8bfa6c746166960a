"""One event of a step plan, with settings of a detector recorded beside its readings.

Why not ``bps.trigger_and_read``: it drops any object whose parent is in the same list
(``bluesky.utils.separate_devices``), so a detector's own setting (the power meter's calibration
wavelength, the camera's exposure) could never be recorded in the event of the detector it
belongs to. Settings change during these plans, and an event descriptor captures configuration
only once per run, so the plans read them as data.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Triggerable

__all__ = ["read_point"]


def read_point(detectors: list[Any], extra: list[Any]) -> Generator:
    """One event: trigger ``detectors`` together, then read them and ``extra`` (signals that are
    components of a detector, already fresh: not triggered)."""
    group = f"point-{uuid.uuid4().hex[:8]}"
    triggered = False
    for obj in detectors:
        if isinstance(obj, Triggerable):
            triggered = True
            yield from bps.trigger(obj, group=group)
    if triggered:  # as bluesky's trigger_and_read: no wait when there was nothing to start
        yield from bps.wait(group=group)
    yield from bps.create("primary")

    def read_all() -> Generator:
        # One message for all of them: bluesky >= 1.16 reads its objects concurrently, so
        # instruments on different lines answer at the same time (each line's own lease
        # still keeps the bytes of two reads on one line apart).
        return (yield from bps.read(*detectors, *extra))

    def drop(exc: Exception) -> Generator:
        yield from bps.drop()  # a half-read event must not be saved
        raise exc

    return (
        yield from bpp.contingency_wrapper(
            read_all(), except_plan=drop, else_plan=bps.save, auto_raise=False
        )
    )
