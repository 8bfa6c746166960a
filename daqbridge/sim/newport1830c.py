"""Newport 1830-C optical power meter, as seen from its RS-232 port.

Pinned to INSTRUMENTS.md ("Newport 1830-C"), never to the daqbridge driver. Quirks reproduced:
LF-terminated replies (CR LF tolerated on input), silent set commands, ``D?`` in short scientific
notation with a sign and no leading zero (``+.75E-9``; a one-digit mantissa comes out as ``5E-9``,
without a sign, as in captured replies), plain decimals in dBm/dB (``-15.24``), ``OVER``/``UNDER``
instead of a number outside the selected range, and the echo mode (``E1``) that puts each command
back on the line before its value. ``echo_on_power_up=True`` starts with echo on, as a meter left
in that state by another program would.

Model (documented in docs/simulators.md): range ``Rn`` (n = 1..8) has full scale
2.5 nW x 10^(n-1) (R1 2.5 nW ... R8 25 mW), x1000 with the attenuator (``A1``); a reading above
full scale is ``OVER``, below 1 % of full scale (ranges 2..8) is ``UNDER``; ``R0`` picks the
lowest range that holds the reading, and ``R?`` then gives the range in use. The display resolves
full scale / 10000. The optical input (watts) comes from ``optical_input()`` or
``set_input_power``; if the light's wavelength (``source_wavelength``) differs from the ``W``
setting, the reading is scaled by the ratio of a simple silicon responsivity curve. Gaussian noise
of ``noise`` (relative, 1 sigma; divided by 4 / 2 / 1 for filter F1 / F2 / F3) uses a seedable
generator; ``noise=0`` gives exact values.

Command set beyond the core (issue 14), with sources:

* [M] Newport 1830-C User's Manual, p. 38 "Q? Status Byte Register query"
  (https://www.easymanua.ls/newport/1830-c/manual?p=51): ``Q?`` or ``q?`` answers the status byte,
  0-255; bit 0 (1) parameter error, 1 (2) command error, 2 (4) saturation ("input signal has
  saturated the photodetector"), 3 (8) over-range ("exceeds the max level for signal range"),
  4 (16) MAV, 5 (32) busy ("auto-ranging or in power-up state"), 6 (64) service request, 7 (128)
  read done ("ready with new power reading"). Every bit but MAV is cleared by ``C``. The ``q?``
  spelling is why every command is taken case-insensitively here.
* [I] /work/shared/INSTRUMENTS.md "Newport 1830-C": ``Wnnnn`` four digits (``W0800``), ``C``
  clears status (not ``CS``), ``Z?``, ``G?``, ``L?`` and ``L0``/``L1`` local lockout.
* [In] mabuchilab/Instrumental instrumental/drivers/powermeters/newport.py (run against real
  meters): the same bit layout; ``Z?`` 0/1 (its identity probe), ``G?`` 0 hold / 1 run, ``L?``
  and ``L0``/``L1``, ``S`` stores the present reading as the dB/REL reference; it sends the
  wavelength unpadded (``W633``).
* [R] a Rust 1830-C driver in the code corpus ("daq-driver-newport", checked on hardware):
  ``W0800``.

Where the sources disagree, and the choice made:

* ``W633``: [I] and [R] give four digits; [In] sends ``W{}`` unpadded; the manual's ``W`` page
  was not among the stored sources. The simulator holds to the four-digit form: ``W633`` leaves
  the wavelength unchanged and sets the parameter-error bit (``Q?`` -> ``129``). A driver that
  sends it then reads a visibly wrong responsivity and a ``W?`` that disagrees here, on every
  machine, instead of passing here and measuring at the wrong calibration on the bench.
* ``Q?`` digits: [M]'s examples print ``01``, ``02``, ``04`` but ``8``, ``16``, ``32``: the
  simulator answers plain decimal (``1``, ``128``); drivers must parse an integer, not compare text.

Status model: parameter error (a known command with a value it cannot take), command error (an
unknown command; still silent), saturation (the light at the detector, after the attenuator, is
above ``saturation_w``: the reading is clipped there and still looks like a number), over-range
(the reading is above the selected range: ``D?`` says ``OVER``) and busy (during ``power_up_s``
after power-up) latch until ``C``. Saturation and over-range are latched by the reading that met
them (``D?``, or ``G0`` taking the held value), so ``Q?`` never samples the light itself: a
condition that persists is latched again by the next reading. Read done is set while the meter
runs (``G1``) and, on hold (``G0``), until the held reading has been read. MAV and service request
stay 0: on RS-232 the reply leaves at once and SRQ is a GPIB line. Unknown commands stay silent,
as on the real meter, and set the command-error bit.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import ClassVar

from daqbridge.sim._core import Faults, SerialSimulator

BASE_FULL_SCALE = 2.5e-9
"""Full scale of range R1 in watts; each range up is ten times more."""
ATTENUATOR_FACTOR = 1000.0
UNDER_FRACTION = 0.01
RESOLUTION = 1e-4
FILTER_NOISE_DIVISOR = {1: 4.0, 2: 2.0, 3: 1.0}

_WAVELENGTH = re.compile(r"W(\d{4})")

PARAMETER_ERROR = 1
COMMAND_ERROR = 2
SATURATED = 4
OVER_RANGE = 8
BUSY = 32
READ_DONE = 128
_LATCHED = PARAMETER_ERROR | COMMAND_ERROR | SATURATED | OVER_RANGE | BUSY


def silicon_responsivity(nm: float) -> float:
    """Relative responsivity (A/W, peak about 0.6 near 950 nm) of a silicon photodiode.

    Deliberately simple: photon energy times a parabolic quantum efficiency; enough to make a
    reading depend on the ``W`` setting the way a real detector does, not a calibration.
    """
    efficiency = max(0.05, 1.0 - ((nm - 900.0) / 550.0) ** 2)
    return nm / 1240.0 * efficiency


def full_scale(power_range: int, attenuator: bool) -> float:
    """Full-scale watts of range ``power_range`` (1..8)."""
    return BASE_FULL_SCALE * 10.0 ** (power_range - 1) * (ATTENUATOR_FACTOR if attenuator else 1.0)


def short_scientific(value: float) -> str:
    """Format as the 1830-C does in W mode: ``+.75E-9``, ``-.1234E-3``, ``5E-9``."""
    if value == 0:
        return "0E0"
    magnitude = abs(value)
    exponent = math.floor(math.log10(magnitude)) + 1
    digits = f"{magnitude / 10.0**exponent:.4f}"
    if digits.startswith("1"):  # rounded up to 1.0000: renormalise
        exponent += 1
        digits = f"{magnitude / 10.0**exponent:.4f}"
    if digits.startswith("0.0"):  # float error just below a power of ten
        exponent -= 1
        digits = f"{magnitude / 10.0**exponent:.4f}"
    fraction = digits[2:].rstrip("0")
    if len(fraction) == 1:
        return f"{'-' if value < 0 else ''}{fraction}E{exponent - 1}"
    return f"{'-' if value < 0 else '+'}.{fraction}E{exponent}"


class Newport1830CSimulator(SerialSimulator):
    """Newport 1830-C power meter (see module docstring for the model)."""

    kind: ClassVar[str] = "newport1830c"
    default_baudrate: ClassVar[int] = 9600
    reply_terminator = b"\n"
    input_terminators: ClassVar[tuple[bytes, ...]] = (b"\n",)

    def __init__(
        self,
        *,
        optical_input: Callable[[], float] | None = None,
        input_power: float = 1e-6,
        source_wavelength: float | None = None,
        wavelength: int = 800,
        units: int = 1,
        power_range: int = 0,
        attenuator: bool = False,
        noise: float = 0.002,
        noise_seed: int | None = None,
        echo_on_power_up: bool = False,
        saturation_w: float = math.inf,
        power_up_s: float = 0.0,
        response_time: float = 0.002,
        speed: float = 1.0,
        faults: Faults | None = None,
        byte_time: bool = False,
        baudrate: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        kw = {"clock": clock} if clock is not None else {}
        super().__init__(speed=speed, faults=faults, byte_time=byte_time, baudrate=baudrate, **kw)
        if not 300 <= int(wavelength) <= 1100:
            raise ValueError(f"wavelength must be 300..1100 nm, got {wavelength!r}")
        if units not in (1, 2, 3, 4):
            raise ValueError(f"units must be 1 (W), 2 (dBm), 3 (dB) or 4 (REL), got {units!r}")
        if power_range not in range(0, 9):
            raise ValueError(f"power_range must be 0 (auto) or 1..8, got {power_range!r}")
        if noise < 0 or response_time < 0 or input_power < 0 or power_up_s < 0:
            raise ValueError("noise, response_time, input_power and power_up_s must be >= 0")
        if not saturation_w > 0:
            raise ValueError(f"saturation_w must be > 0 W, got {saturation_w!r}")
        if optical_input is not None and not callable(optical_input):
            raise ValueError("optical_input must be a callable returning watts")
        self.optical_input = optical_input
        self._input_power = float(input_power)
        self.source_wavelength = source_wavelength
        self.wavelength = int(wavelength)
        self.units = units
        self.auto_range = power_range == 0
        self.power_range = power_range or 1
        self.attenuator = bool(attenuator)
        self.filter = 3
        self.beeper = True
        self.hold_value: float | None = None
        self.zero_offset = 0.0
        self._zero_on = False
        self.reference: float | None = None
        self.noise = float(noise)
        self.echo_enabled = bool(echo_on_power_up)
        self.response_time = float(response_time)
        self.saturation_w = float(saturation_w)
        self.power_up_s = float(power_up_s)
        self.local_lockout = False
        self.status_latched = 0
        """Bits 0-5 of the status byte as latched since the last ``C``."""
        self._held_read = False
        self._powered_up_at = self.clock()
        seed = noise_seed if noise_seed is not None else self.faults.seed
        self._noise_rng = random.Random(seed)

    # --- the optical side -----------------------------------------------------------------------

    def set_input_power(self, watts: float) -> None:
        """Light arriving at the detector (used when no ``optical_input`` callable is given)."""
        if not watts >= 0:
            raise ValueError(f"optical power must be >= 0 W, got {watts!r}")
        with self.lock:
            self._input_power = float(watts)

    @property
    def input_power(self) -> float:
        if self.optical_input is not None:
            return max(0.0, float(self.optical_input()))
        return self._input_power

    def _saturation_at_input(self) -> float:
        """Input watts at which the detector (behind the attenuator, if in) saturates."""
        return self.saturation_w * (ATTENUATOR_FACTOR if self.attenuator else 1.0)

    def measured_power(self) -> float:
        """Watts the meter would display now (before range checks and formatting)."""
        power = self.input_power  # sampled once: an optical_input callable sees one call a reading
        if power > self._saturation_at_input():
            # The photodiode clips: the reading stops rising and still looks like a number.
            self.status_latched |= SATURATED
            power = self._saturation_at_input()
        if self.source_wavelength:
            power *= silicon_responsivity(self.source_wavelength) / silicon_responsivity(
                self.wavelength
            )
        if self.noise:
            sigma = self.noise / FILTER_NOISE_DIVISOR[self.filter]
            power += self._noise_rng.gauss(0.0, sigma) * power
        return power - self.zero_offset

    def _displayed(self) -> float:
        return self.hold_value if self.hold_value is not None else self.measured_power()

    def status_byte(self) -> int:
        """The value ``Q?`` answers now (reading it does not sample the light)."""
        if self.sim_elapsed(self._powered_up_at) < self.power_up_s:
            self.status_latched |= BUSY
        value = self.status_latched
        if self.hold_value is None or not self._held_read:
            value |= READ_DONE
        return value

    # --- replies --------------------------------------------------------------------------------

    def reading(self) -> str:
        """The text ``D?`` answers now."""
        value = self._displayed()
        if self.auto_range:
            for r in range(1, 9):
                if value <= full_scale(r, self.attenuator):
                    self.power_range = r
                    break
            else:
                self.power_range = 8
                self.status_latched |= OVER_RANGE
                return "OVER"
        fs = full_scale(self.power_range, self.attenuator)
        if value > fs:
            self.status_latched |= OVER_RANGE
            return "OVER"
        if not self.auto_range and self.power_range > 1 and value < fs * UNDER_FRACTION:
            return "UNDER"
        step = fs * RESOLUTION
        value = round(value / step) * step
        if self.units == 1:
            return short_scientific(value)
        if self.units == 2:
            return "UNDER" if value <= 0 else f"{10 * math.log10(value / 1e-3):.2f}"
        reference = max(self.reference or 0.0, 1e-15)
        if self.units == 3:
            return "UNDER" if value <= 0 else f"{10 * math.log10(value / reference):.2f}"
        return short_scientific(value / reference)

    def _answer(self, text: str) -> None:
        self.reply(text, delay=self.real_delay(self.response_time))

    def handle_line(self, line: str) -> None:
        if self.echo_enabled:
            # The meter echoes what it received, E0 included, on its own line.
            self._emit(line.encode("ascii", "replace") + self.reply_terminator, delay=0.0)
        command = line.strip().upper()  # [M]: "Q? or q?"
        if command == "D?":
            self._answer(self.reading())
            if self.hold_value is not None:
                self._held_read = True
            return
        queries = {
            "W?": lambda: f"{self.wavelength:04d}",
            "U?": lambda: str(self.units),
            "R?": lambda: str(self.power_range),
            "A?": lambda: "1" if self.attenuator else "0",
            "F?": lambda: str(self.filter),
            "Q?": lambda: str(self.status_byte()),
            "Z?": lambda: "1" if self.zero_enabled else "0",
            "G?": lambda: "0" if self.hold_value is not None else "1",
            "L?": lambda: "1" if self.local_lockout else "0",
        }
        if command in queries:
            self._answer(queries[command]())
            return
        if command == "C":
            self.status_latched = 0
            return
        if command == "S":
            self.reference = self._displayed()  # [In]: the reference of dB and REL
            return
        if command.startswith("W") and command != "W?":
            m = _WAVELENGTH.fullmatch(command)
            if m and 300 <= int(m.group(1)) <= 1100:
                self.wavelength = int(m.group(1))
            else:
                self._parameter_error(line, "W takes four digits, 0300-1100 (W0633)")
            return
        if len(command) == 2 and command[0] in self._SETTERS and command[1] != "?":
            if not (command[1].isdigit() and self._set(command[0], int(command[1]))):
                self._parameter_error(line, f"no such setting for {command[0]}")
            return
        self.status_latched |= COMMAND_ERROR
        self.protocol_error(line, "not a 1830-C command")

    _SETTERS: ClassVar[frozenset[str]] = frozenset("URAFBGZEL")

    def _parameter_error(self, line: str, why: str) -> None:
        self.status_latched |= PARAMETER_ERROR
        self.protocol_error(line, why)

    @property
    def zero_enabled(self) -> bool:
        return self._zero_on

    def _set(self, letter: str, n: int) -> bool:
        if letter == "U" and 1 <= n <= 4:
            if n in (3, 4):  # dB / REL: the present reading becomes the reference
                self.reference = self._displayed()
            self.units = n
        elif letter == "R" and 0 <= n <= 8:
            self.auto_range = n == 0
            if n:
                self.power_range = n
        elif letter == "A" and n in (0, 1):
            self.attenuator = bool(n)
        elif letter == "F" and 1 <= n <= 3:
            self.filter = n
        elif letter == "B" and n in (0, 1):
            self.beeper = bool(n)
        elif letter == "G" and n in (0, 1):
            self.hold_value = None if n else self.measured_power()
            self._held_read = False
        elif letter == "Z" and n in (0, 1):
            # Z1 takes the present reading as the dark offset, Z0 clears it.
            self.zero_offset = 0.0
            if n:
                self.zero_offset = self.measured_power()
            self._zero_on = bool(n)
        elif letter == "E" and n in (0, 1):
            self.echo_enabled = bool(n)
        elif letter == "L" and n in (0, 1):
            self.local_lockout = bool(n)  # front panel locked; nothing else changes remotely
        else:
            return False
        return True


SIMULATOR = "serial:Newport1830CSimulator"
"""How ``daqbridge.sim`` finds this simulator (its kind is this module's name)."""
