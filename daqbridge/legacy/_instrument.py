"""The contract every legacy ("V2") instrument driver fulfils.

Threading contract (what the runtime guarantees, so drivers need no locks of their own):
``connect``, ``poll``, ``handle`` and ``disconnect`` of one instrument are always called from ONE
thread, the instrument's worker thread, never concurrently. Only ``stop()`` is called from
another thread, while ``handle`` may be running (that is its purpose: interrupt a long move), so
it must be safe to call concurrently and must not wait for the running command.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from daqbridge.errors import ValueRejected
from daqbridge.legacy._command import Command, CommandResult
from daqbridge.legacy._measurement import ChannelInfo, Measurement, MeasurementValue, ParameterInfo

Publisher = Callable[[Measurement], None]

log = logging.getLogger("daqbridge.legacy")


class LegacyInstrument(ABC):
    """Base of legacy drivers: connect, poll for measurements, answer commands.

    Two ways to deliver data, both end up in the runtime's distributor: return measurements from
    ``poll()`` (called at the configured polling rate), or push them at any time with
    ``self.publish(m)`` (for instruments that stream, or to publish the result of a command).
    """

    def __init__(self, instrument_id: str) -> None:
        if not isinstance(instrument_id, str) or not instrument_id:
            raise ValueError(f"instrument_id must be a non-empty string, got {instrument_id!r}")
        self._instrument_id = instrument_id
        self._publisher: Publisher | None = None

    @property
    def instrument_id(self) -> str:
        return self._instrument_id

    # --- lifecycle ------------------------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Open the link and bring the instrument to a known state; raise on failure."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the link. Must tolerate being called after a failed or partial connect."""

    def stop(self) -> bool:
        """Stop any motion or long action now; called from another thread. Returns whether
        there was anything to stop (instruments that never move keep this default)."""
        return False

    # --- data and control -----------------------------------------------------------------

    @abstractmethod
    def poll(self) -> list[Measurement]:
        """Read the instrument once; raising marks the poller as crashed (it is restarted)."""

    @abstractmethod
    def handle(self, command: Command) -> CommandResult:
        """Carry out one command. Report refusals as ``CommandResult.failure``, not exceptions."""

    @abstractmethod
    def parameters(self) -> dict[str, ParameterInfo]:
        """The settable/queryable parameters, by name."""

    @abstractmethod
    def channels(self) -> dict[str, ChannelInfo]:
        """The channels ``poll`` and ``publish`` produce, by name."""

    # --- publishing -----------------------------------------------------------------------

    def bind_publisher(self, publish: Publisher | None) -> None:
        """Given by the runtime when the instrument is added (``None`` when it is removed)."""
        self._publisher = publish

    def publish(self, measurement: Measurement) -> None:
        """Push a measurement outside of ``poll``. Dropped (with a debug log) when unbound."""
        if self._publisher is None:
            log.debug("%s: no runtime bound, dropped %s", self.instrument_id, measurement.channel)
            return
        self._publisher(measurement)

    # --- helpers for drivers --------------------------------------------------------------

    def measurement(self, channel: str, value: MeasurementValue, **metadata: Any) -> Measurement:
        """A measurement of one of this instrument's channels, unit taken from ``channels()``."""
        info = self.channels().get(channel)
        unit = info.unit if info is not None else ""
        return Measurement.now(self.instrument_id, channel, value, unit, **metadata)

    def check_value(self, name: str, value: Any) -> Any:
        """Validate a ``set`` against ``parameters()`` before it reaches the wire.

        Returns the value converted to the parameter's dtype; raises ``ValueRejected``.
        """
        info = self.parameters().get(name)
        if info is None:
            raise ValueRejected(
                f"no parameter named {name!r}",
                value=value,
                instrument=self.instrument_id,
                fix=f"use one of {sorted(self.parameters())}.",
            )
        if not info.settable:
            raise ValueRejected(
                f"parameter {name!r} is read-only",
                value=value,
                instrument=self.instrument_id,
                fix="query it instead of setting it.",
            )
        if info.choices is not None:
            if value not in info.choices:
                raise ValueRejected(
                    f"{name} = {value!r} is not one of {list(info.choices)}",
                    value=value,
                    limit=info.choices,
                    instrument=self.instrument_id,
                    fix=f"choose one of {list(info.choices)}.",
                )
            return value
        if info.dtype in ("number", "integer"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueRejected(
                    f"{name} = {value!r} is not a number",
                    value=value,
                    instrument=self.instrument_id,
                    fix=f"give {name} as a number{f' in {info.unit}' if info.unit else ''}.",
                ) from None
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueRejected(
                    f"{name} = {value!r} is not a finite number",
                    value=value,
                    instrument=self.instrument_id,
                    fix="give a finite value.",
                )
            if info.limits is not None and not info.limits[0] <= number <= info.limits[1]:
                lo, hi = info.limits
                raise ValueRejected(
                    f"{name} = {value!r} {info.unit} is outside {lo:g}..{hi:g} {info.unit}",
                    value=value,
                    limit=info.limits,
                    instrument=self.instrument_id,
                    fix=f"choose a value between {lo:g} and {hi:g}.",
                )
            if info.dtype == "integer":
                if number != int(number):
                    raise ValueRejected(
                        f"{name} = {value!r} must be a whole number",
                        value=value,
                        instrument=self.instrument_id,
                        fix="give an integer.",
                    )
                return int(number)
            return number
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.instrument_id!r}>"
