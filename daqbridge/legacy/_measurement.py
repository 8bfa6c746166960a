"""The records a legacy instrument produces and the descriptions of what it can produce.

A ``Measurement`` is the unit that travels through the distributor to every subscriber (the
ophyd adapter, the measurement bridge, plots, loggers), so it is immutable: one subscriber can never
change what another sees.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MeasurementValue = float | int | str | np.ndarray

DTYPES = ("number", "integer", "string", "array", "boolean")
"""Value kinds a channel or parameter may declare (the same words event-model uses)."""


@dataclass(frozen=True, eq=False)
class Measurement:
    """One reading of one channel of one instrument, stamped with wall-clock time.

    ``timestamp`` is epoch seconds (``time.time()``) because measurements are compared with
    event-model documents, which use epoch time too.
    """

    instrument_id: str
    channel: str
    value: MeasurementValue
    unit: str
    timestamp: float
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def now(
        cls,
        instrument_id: str,
        channel: str,
        value: MeasurementValue,
        unit: str = "",
        **metadata: Any,
    ) -> Measurement:
        """A measurement stamped with the current time (what a poller normally wants)."""
        return cls(instrument_id, channel, value, unit, time.time(), metadata)

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ compares tuples, which raises on numpy arrays ("truth value of an
        # array is ambiguous"); compare arrays by content instead.
        if not isinstance(other, Measurement):
            return NotImplemented
        if (self.instrument_id, self.channel, self.unit, self.timestamp) != (
            other.instrument_id,
            other.channel,
            other.unit,
            other.timestamp,
        ):
            return False
        if isinstance(self.value, np.ndarray) or isinstance(other.value, np.ndarray):
            if not np.array_equal(np.asarray(self.value), np.asarray(other.value)):
                return False
        elif self.value != other.value:
            return False
        return dict(self.metadata) == dict(other.metadata)

    __hash__ = None  # type: ignore[assignment]  # metadata and arrays are unhashable


@dataclass(frozen=True)
class ChannelInfo:
    """A stream of values an instrument publishes (what the adapter describes as a data key)."""

    name: str
    unit: str = ""
    dtype: str = "number"
    shape: tuple[int, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"channel {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")


@dataclass(frozen=True)
class ParameterInfo:
    """A setting of an instrument that can be queried and, if ``settable``, set.

    ``limits`` are inclusive (low, high) bounds for numbers; ``choices`` lists the allowed values
    for enumerations. Both are checked by the driver before anything reaches the wire.
    """

    name: str
    unit: str = ""
    settable: bool = True
    queryable: bool = True
    limits: tuple[float, float] | None = None
    choices: tuple[Any, ...] | None = None
    dtype: str = "number"
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"parameter {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}"
            )
        if self.limits is not None and not self.limits[0] <= self.limits[1]:
            raise ValueError(f"parameter {self.name!r}: limits {self.limits!r} are not (low, high)")
