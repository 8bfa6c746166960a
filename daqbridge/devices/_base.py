"""Checks every native driver makes before a value reaches the wire, in one place.

* ``check_wire_text`` / ``check_number``: values are validated before they reach the wire, so a
  string carrying a terminator or a second command (``"1PA10\\r\\n1PA-50"``) can never be sent,
  and one that cannot be encoded as ASCII is refused in words, not by the encoder.
* ``positive_setting``: a constructor's timing or tolerance argument, refused with the key named.

(The ophyd v1 base the drivers once shared, a worker thread per instrument and its signals, is
gone: native drivers and the legacy adapter are ophyd-async devices.)
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from daqbridge.errors import (
    ConfigError,
    ValueRejected,
)

T = TypeVar("T")

#: Characters that end or separate commands on the instruments daqbridge drives.
FORBIDDEN_IN_COMMANDS = ("\r", "\n", ";", "\x00")


def check_wire_text(value: str, *, instrument: str, what: str) -> str:
    """Refuse text that cannot be sent (a character that is not ASCII: the instruments read
    7-bit ASCII, IEEE 488.2 program messages too) or that would smuggle a terminator or a second
    command onto the wire."""
    if not isinstance(value, str):
        raise ValueRejected(
            f"{what} must be text, got {type(value).__name__} {value!r}.",
            instrument=instrument,
            value=value,
        )
    if not value.isascii():
        odd = next(c for c in value if not c.isascii())
        raise ValueRejected(
            f"{what} {value!r} has a character that is not ASCII ({odd!r}); the instrument "
            "reads commands as 7-bit ASCII, so it cannot be sent.",
            instrument=instrument,
            value=value,
            fix="write it in ASCII characters only (e.g. 'u' for 'µ', 'deg' for '°').",
        )
    bad = [c for c in FORBIDDEN_IN_COMMANDS if c in value]
    if bad or not value.isprintable():
        raise ValueRejected(
            f"{what} {value!r} contains a command terminator or separator {bad or 'control'!r}; "
            "it would send a second command to the instrument.",
            instrument=instrument,
            value=value,
            fix="pass a single value without CR, LF, ';' or control characters.",
        )
    return value


def positive_setting(value: Any, key: str, name: str, *, zero: bool = False) -> float:
    """A constructor's timing or tolerance argument: a finite number > 0 (>= 0 with ``zero``),
    or a ConfigError naming the key and the instrument, before any byte is sent."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
    if not ok:
        raise ConfigError(
            f"{key} must be a finite number {'>= 0' if zero else '> 0'}, got {value!r}.",
            key=key,
            instrument=name,
        )
    return float(value)


def check_number(
    value: Any,
    *,
    instrument: str,
    what: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
) -> float:
    """Validate a number against its limits before any byte is sent; the error names the limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
                value = value.item()
            else:
                raise TypeError
        except TypeError:
            raise ValueRejected(
                f"{what} must be a number, got {type(value).__name__} {value!r}.",
                instrument=instrument,
                value=value,
            ) from None
    if not math.isfinite(value):
        raise ValueRejected(
            f"{what} must be finite, got {value!r}.", instrument=instrument, value=value
        )
    if integer and int(value) != value:
        raise ValueRejected(
            f"{what} must be a whole number, got {value!r}.", instrument=instrument, value=value
        )
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueRejected(
            f"{what} {value!r} is outside the limits [{low}, {high}].",
            instrument=instrument,
            value=value,
            limit=(low, high),
            fix=f"choose a value between {low} and {high}, or change the limits in the profile.",
        )
    return int(value) if integer else float(value)
