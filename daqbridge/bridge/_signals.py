"""The ophyd v1 pieces of the legacy adapter: a signal the adapter refreshes, and statuses.

ophyd v1 stays where it belongs (issue 12): the legacy adapter is an ophyd v1 device fed by the
legacy stack's distributor, the IOC serves v1-shaped devices, and ``ophyd.EpicsMotor`` is the
client of the IOC; every native driver is an ophyd-async device. These pieces were the native
drivers' v1 base (``daqbridge/devices/_base.py``) and now serve the adapter alone.

* ``InstrumentSignal``: a soft signal whose ``describe()`` carries units, precision, limits and a
  source naming the instrument and port, because the catalog and BestEffortCallback read those
  from the descriptor. It is read-only (ophyd's ``write_access`` False) unless its class says
  ``writable = True``: front ends (the IOC) decide who may write a signal from that attribute,
  never from class names, so a new channel cannot become writable by accident.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from ophyd import Kind, Signal
from ophyd.status import StatusBase
from ophyd.utils import InvalidState

__all__ = ["InstrumentSignal", "fail_status", "finish_status"]


def finish_status(status: StatusBase) -> None:
    """Mark a status done, unless something (a stop, a timeout) already settled it."""
    with contextlib.suppress(InvalidState):
        status.set_finished()


def fail_status(status: StatusBase, exc: BaseException) -> None:
    """Fail a status, unless something (a stop, a timeout) already settled it."""
    with contextlib.suppress(InvalidState):
        status.set_exception(exc)


class InstrumentSignal(Signal):
    """A signal whose value the device refreshes from its worker thread.

    ``units``, ``precision``, ``limits`` and ``source`` end up in the event descriptor, which is
    what tables, plots and the catalog show the scientist. ``writable`` (the class's, or given
    per signal when it depends on the configuration) becomes ophyd's ``write_access``.
    """

    writable: ClassVar[bool] = False
    """True for settings (a set commands the instrument), False for what it measures."""

    def __init__(
        self,
        *,
        units: str | None = None,
        precision: int | None = None,
        limits: tuple[float, float] | None = None,
        source: str | None = None,
        kind: Kind | str = Kind.normal,
        writable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(kind=kind, **kwargs)
        self._metadata["write_access"] = type(self).writable if writable is None else writable
        self._units = units
        self._precision = precision
        self._limits = limits
        self._source = source

    @property
    def source_name(self) -> str:
        return self._source or f"daqbridge:{self.name}"

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        entry = desc[self.name]
        if self._units is not None:
            entry["units"] = self._units
        if self._precision is not None:
            entry["precision"] = self._precision
        if self._limits is not None:
            entry["limits"] = {"control": {"low": self._limits[0], "high": self._limits[1]}}
        return desc

    def update(self, value: Any, timestamp: float | None = None) -> None:
        """Store a value read from the instrument (fires subscriptions: progress bars, monitors)."""
        self.put(value, timestamp=timestamp, force=True)
