"""Newport ESP300 motion controller as native ophyd-async devices: the controller and its axes.

The instrument's facts (unit codes, error meanings and fixes, number format) are written once,
below, and the profile's ``[instruments.esp300]`` table (:class:`Esp300Settings`) is declared
from them; the controller's constructor validates through that model and the module registers
the driver, so ``config check``, start-up and Python code cannot disagree.
A move is a coroutine (``PA`` in one lease, then ``MD?`` + ``TP?`` polls in short leases) and the
port's lease is the only scheduler, so two axes on one port move at once with no thread at all
(the v1 driver this replaced needed a cooperative scheduler on a worker thread). Data keys,
kinds, units, precision, limits and descriptor ``source`` are the v1 axis's, key for key, so
catalogs written before read the same.

Wire behaviour (INSTRUMENTS.md, "Newport ESP300"; tests/transcripts/esp300.yaml):

* Connect, one lease (the transcript's ``driver_connect``): ``VE?`` (``*IDN?`` if silent) must
  name an ESP300; ``TE?`` until ``0`` clears errors left by an earlier session (logged); then per
  axis ``nMO?`` (``nMO`` first when the profile says ``motor_on``), ``nID?`` (stage model and
  serial; a stage without ESP data or a controller without ``ID?`` leaves it unknown),
  ``nSN`` (units), ``nVU?`` (the maximum velocity, so a faster profile velocity is refused before
  ``VA``), the profile's ``VA``/``AC``/``AG``, then ``nVA?``, ``nAC?``, ``nTP?``; ``TE?`` once more
  only if something was set (queued errors are the controller's only refusal).
* Errors never come back on the failing command: a move is done when ``MD?`` says ``1``, and
  then ``TE?`` is drained in the same lease; a code for another axis is handed to that axis's
  move (or logged when it is idle).
* After the port was reopened the controller is proved again before the next command: identity,
  stale errors, every axis's motor state and stage (a different stage on the connector is an
  IdentityMismatch, a garbled reply is asked once more).
* Soft limits refuse a target before any byte; a velocity above ``nVU`` is refused before ``VA``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from ophyd_async.core import SignalRW, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from pydantic import AfterValidator, Field, model_validator

from daqbridge.devices._base import check_number
from daqbridge.devices._registry import (
    DriverSettings,
    EntryDefault,
    ProfileEntry,
    register_driver,
    settings_error,
    validate_settings,
)
from daqbridge.devices.core import (
    Exchange,
    LeasedPort,
    SetNotConfirmed,
    WireCommand,
    WireDevice,
    WireMotion,
    WireMovableLogic,
    WirePositioner,
    WireSignalBackend,
    wire_backend,
    wire_signal_r,
    wire_target_signal,
)
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    ValueRejected,
)

__all__ = [
    "ESP300_UNITS",
    "ESP300Axis",
    "ESP300Controller",
    "Esp300Axis",
    "Esp300Settings",
    "build",
    "esp300_error_meaning",
]

log = logging.getLogger(__name__)

ESP300_UNITS: dict[str, int] = {
    "counts": 0,
    "steps": 1,
    "mm": 2,
    "um": 3,
    "in": 4,
    "mil": 5,
    "uin": 6,
    "deg": 7,
    "grad": 8,
    "rad": 9,
    "mrad": 10,
    "urad": 11,
}
"""Unit names and their ``SN`` codes."""

# Meanings from the ESP300 manual's error appendix. Codes above 100 are axis errors:
# axis * 100 + code.
_GENERAL_ERRORS = {
    1: "PCI communication time-out",
    4: "emergency stop activated",
    6: "command does not exist",
    7: "parameter out of range",
    8: "cable interlock error",
    9: "axis number out of range",
    37: "axis number missing",
    38: "command parameter missing",
}
_AXIS_ERRORS = {
    0: "motor type not defined",
    1: "parameter out of range",
    2: "amplifier fault detected",
    3: "following error threshold exceeded",
    4: "positive hardware limit detected",
    5: "negative hardware limit detected",
    6: "positive software limit detected",
    7: "negative software limit detected",
    8: "motor not connected",
    9: "feedback signal fault detected",
    10: "maximum velocity exceeded",
    11: "maximum acceleration exceeded",
    13: "motor not enabled",
    20: "homing aborted",
}
_AXIS_FIXES = {
    2: "check the driver card and motor cable, then power-cycle the controller.",
    3: "lower velocity/acceleration or check the stage for mechanical blockage.",
    4: "the stage hit its hardware limit switch: move back the other way.",
    5: "the stage hit its hardware limit switch: move back the other way.",
    6: "the controller's own software limit (SR) refuses it: change the target or SR.",
    7: "the controller's own software limit (SL) refuses it: change the target or SL.",
    8: "connect the stage cable to this axis and power-cycle the controller.",
    10: "lower the velocity (VA) below the stage's maximum.",
    11: "lower the acceleration (AC/AG).",
    13: "turn the motor on (front panel, or send nMO; motor_on=True does it at connect).",
}

_MAX_QUEUED_ERRORS = 12
"""TE? pops at most this many codes per check (the controller's queue is about this deep), so
a device answering garbage forever cannot hold the port."""

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def esp300_error_meaning(code: int) -> str:
    """Text for a ``TE?`` code: general codes below 100, axis codes as axis*100 + code."""
    if code >= 100:
        return _AXIS_ERRORS.get(code % 100, "axis error (see the ESP300 manual, appendix A)")
    return _GENERAL_ERRORS.get(code, "error (see the ESP300 manual, appendix A)")


def _format_value(value: float) -> str:
    # Fixed point: the controller takes integers or decimals; exponent notation is not in the
    # command grammar.
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def _number(reply: str) -> float:
    if not _NUMBER.fullmatch(reply):
        raise ValueError(reply)
    return float(reply)


def _flag(reply: str) -> bool:
    if reply not in ("0", "1"):
        raise ValueError(reply)
    return reply == "1"


def _stage(reply: str) -> tuple[str, str]:
    model, _, serial = reply.partition(",")
    return model.strip(), serial.strip()


class _SettingBackend(WireSignalBackend[float]):
    """``VA``/``AC``: set, read back and drain ``TE?`` in one lease, as the v1 axis does.

    The descriptor names the set command (``1VA``), as the v1 axis's does; the value goes out in
    the v1 number format (``1VA7.5``, ``1VA10``); a refusal is a queued error, so ``TE?`` is
    drained before the read-back is trusted.
    """

    def source(self, name: str, read: bool) -> str:
        return self.device.source_for(self.command.set_command.split("{")[0])  # type: ignore[union-attr]

    def check(self, value: Any) -> tuple[float, str]:
        wanted, _ = super().check(value)
        return wanted, self.command.set_command.format(_format_value(wanted))  # type: ignore[union-attr]

    async def put(self, value: float | None) -> None:
        axis: ESP300Axis = self.device  # type: ignore[assignment]
        wanted, command = self.check(value)
        async with axis.transaction() as x:
            await x.write(command)
            got = await self.read_in(x)
            codes = await axis.controller.errors_for(x, axis)
        if codes:
            raise axis.controller.fault(axis, codes, f"after {command}")
        if got != wanted:
            raise SetNotConfirmed(
                f"the controller did not take {command!r}: {self.command.query} reads {got!r}.",
                wanted=wanted,
                got=got,
                instrument=axis.name,
                resource=axis.port.url,
                fix="check the front panel and the stage's limits.",
            )
        self.store(got)


@dataclass
class ESP300MoveLogic(WireMovableLogic):
    """The ESP300's rules around a move: motor state before ``PA``, ``TE?`` after ``MD?`` 1."""

    axis: ESP300Axis

    async def before_move(self, x: Exchange, target: float) -> None:
        axis = self.axis
        n = axis.number
        if axis.motor_enabled is False and not await axis.controller.check_motor(x, axis):
            raise InstrumentFault(
                f"axis {n} ({axis.name}): the motor is off; the move to {target:g} was not sent.",
                code=n * 100 + 13,
                instrument=axis.controller.name,
                resource=axis.port.url,
                fix=f"turn the motor on (front panel or {n}MO), or set motor_on=True in the "
                "profile so connect does it.",
            )

    async def after_move(self, x: Exchange, target: float) -> None:
        axis = self.axis
        codes = await axis.controller.errors_for(x, axis)
        if codes:
            raise axis.controller.fault(axis, codes, f"during the move to {target:g}")


class ESP300Axis(StandardReadable, WirePositioner):
    """One axis: readback ``<name>`` (hinted, ``nTP?``), ``<name>_setpoint`` (``nPA``),
    configuration ``velocity``, ``acceleration``, ``max_velocity``, ``stage_model``,
    ``stage_serial``. Built by :class:`ESP300Controller` from its validated :class:`Esp300Axis`
    entry; talks through its leases. The lab addresses it by its own id (``sim_stage_x``): the
    driver declares the axes as its parts (``register_driver(parts=...)``, below)."""

    def __init__(self, controller: ESP300Controller, settings: Esp300Axis, name: str = "") -> None:
        # Not a child (Device.__setattr__ would make the controller a child of its axis).
        object.__setattr__(self, "_controller", controller)
        self.number = n = settings.number
        self.settings = settings
        self.motor_enabled: bool | None = None
        """``nMO?`` as last asked (connect, re-verification, a move of a motor found off)."""
        self.stage_identity: tuple[str, str] | None = None
        """(model, serial) the stage answered to ``nID?`` at connect; ("", "") if unknown."""
        egu = settings.units
        per_s = f"{egu}/s"
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.readback = wire_signal_r(
                float,
                self,
                WireCommand(
                    query=f"{n}TP?", parse=_number, units=egu, precision=5, what="a position"
                ),
            )
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.setpoint = wire_target_signal(
                self,
                f"{n}PA",
                lambda target: self.movable_logic.start(target),
                units=egu,
                precision=5,
                limits=(settings.low_limit, settings.high_limit),
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.velocity = self._setting("VA", "velocity", per_s, self._check_velocity)
            self.acceleration = self._setting(
                "AC", "acceleration", f"{egu}/s^2", self._check_positive
            )
            self.max_velocity = wire_signal_r(
                float, self, WireCommand(query=f"{n}VU?", parse=_number, units=per_s)
            )
            self.stage_model = wire_signal_r(
                str, self, WireCommand(query=f"{n}ID?", read=self._read_stage_model)
            )
            self.stage_serial = wire_signal_r(
                str, self, WireCommand(query=f"{n}ID?", read=self._read_stage_serial)
            )
        super().__init__(name=name)

    def _setting(self, cmd: str, what: str, units: str | None, validate: Any) -> SignalRW[float]:
        n = self.number
        command = WireCommand(
            query=f"{n}{cmd}?",
            parse=_number,
            set_command=f"{n}{cmd}{{}}",
            validate=lambda v: validate(v, what),
            units=units,
            what="a number",
        )
        return SignalRW(_SettingBackend(float, self, command))  # type: ignore[arg-type]

    @cached_property
    def movable_logic(self) -> ESP300MoveLogic:
        n = self.number
        return ESP300MoveLogic(
            setpoint=self.setpoint,
            readback=self.readback,
            axis=self,
            motion=WireMotion(
                move=f"{n}PA{{}}",
                done=f"{n}MD?",
                is_done=_flag,
                stop=f"{n}ST",
                format_target=_format_value,
            ),
            limits=(self.settings.low_limit, self.settings.high_limit),
            velocity=self.velocity,
            acceleration=self.acceleration,
            what=f"target position of axis {n}",
        )

    # --- what the wire signals and the logic need (the controller's leases) ---------------------

    @property
    def controller(self) -> ESP300Controller:
        return self._controller

    @property
    def port(self) -> LeasedPort:
        return self.controller.port

    def transaction(self) -> AbstractAsyncContextManager[Exchange]:
        """The controller's lease (re-verifying it first after a reopen)."""
        return self.controller.transaction()

    def source_for(self, command: str) -> str:
        return f"{self.controller.model} {self.port.url} axis {self.number} {command}"

    def rejected(self, what: str, value: Any, fix: str | None = None) -> ValueRejected:
        return ValueRejected(
            what, value=value, instrument=self.name, resource=self.port.url, fix=fix
        )

    @property
    def limits(self) -> tuple[float, float]:
        """Soft limits as ophyd gives them (both are always given), for the IOC's motor record."""
        return (self.settings.low_limit, self.settings.high_limit)

    # --- validation (synchronous, before any byte) ----------------------------------------------

    def _check_positive(self, value: Any, what: str) -> float:
        v = check_number(value, instrument=self.name, what=what, low=0.0)
        if v <= 0:
            raise self.rejected(f"{what} must be > 0, got {value!r}.", value)
        return v

    def _check_velocity(self, value: Any, what: str = "velocity", where: str = "") -> float:
        v = self._check_positive(value, what)
        last = wire_backend(self.max_velocity)._reading
        high = last["value"] if last is not None else math.nan
        if math.isfinite(high) and v > high:
            raise ValueRejected(
                f"velocity {v:g}{where} is above the maximum of axis {self.number} "
                f"({self.name}), {high:g} (the controller's {self.number}VU).",
                instrument=self.name,
                resource=self.port.url,
                value=v,
                limit=(0.0, high),
                fix=f"give a velocity up to {high:g}, or raise {self.number}VU on the controller "
                "if the stage allows it.",
            )
        return v

    # --- stage identity -------------------------------------------------------------------------

    async def _read_stage_model(self, x: Exchange) -> str:
        return (await self.controller.check_stage(x, self, connecting=False))[0]

    async def _read_stage_serial(self, x: Exchange) -> str:
        return (await self.controller.check_stage(x, self, connecting=False))[1]


class ESP300Controller(WireDevice):
    """The controller on one port (19200 baud) with 1-3 axes as children.

    ``axes`` are the profile's ``esp300.axes`` entries (:class:`Esp300Axis`, or mappings of its
    keys), or, from Python, a mapping of each axis's name to the other keys of its entry
    (controller ``sim_stage``, axis ``x`` -> data key ``sim_stage_x``). Both are checked by the
    driver's settings model (:class:`Esp300Settings`, with ``motor_on``), so the constructor
    refuses what ``config check`` refuses, in the same words, before any byte is sent.
    ``motor_on=True`` turns motors found off on at connect; otherwise a motor-off axis is
    reported and its moves are refused without ``PA``.
    """

    model: ClassVar[str] = "ESP300"
    terminator: ClassVar[bytes] = b"\r\n"

    def __init__(
        self,
        port: LeasedPort,
        *,
        name: str = "",
        axes: Mapping[str, Mapping[str, Any]] | Sequence[Esp300Axis | Mapping[str, Any]],
        motor_on: bool = False,
        timeout: float = 1.0,
        lease_timeout: float = 5.0,
    ) -> None:
        # The driver's settings model (the profile's [instruments.esp300] table): the
        # constructor refuses what `config check` refuses, in the same words.
        entries = _axis_entries(axes, instrument=name, resource=port.url)
        try:
            settings = validate_settings(
                Esp300Settings,
                {"axes": entries, "motor_on": motor_on},
                instrument=name,
                resource=port.url,
            )
        except ConfigError as exc:
            raise _naming_the_axis(exc, list(axes) if isinstance(axes, Mapping) else []) from None
        self.settings = settings
        """The validated ``[instruments.esp300]`` table this controller was made from."""
        self.motor_on = self.settings.motor_on
        self.stale_errors: list[int] = []
        """Error codes found in the queue at connect (left by an earlier session)."""
        self._connecting = False
        self._errors_for_axis: dict[int, list[int]] = {}
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.identity = wire_signal_r(
                str, self, WireCommand(query="VE?", read=self._read_identity)
            )
        self.axes: dict[int, ESP300Axis] = {}
        for spec in self.settings.axes:
            axis = ESP300Axis(self, spec)
            setattr(self, spec.name, axis)  # a child: named <controller>_<axis name>
            self.axes[spec.number] = axis
        super().__init__(port, name=name, timeout=timeout, lease_timeout=lease_timeout)

    # --- connection -----------------------------------------------------------------------------

    async def connect_wire(self) -> None:
        self._connecting = True
        try:
            await super().connect_wire()
        finally:
            self._connecting = False

    async def identify(self, x: Exchange) -> None:
        """Identity and stale errors; after a reopen also every axis's motor and stage."""
        ident = await self._identity(x)
        wire_backend(self.identity).store(ident)
        stale = await self.pop_errors(x)
        if stale:
            self.stale_errors = stale
            log.warning(
                "ESP300 %s on %s: cleared %d stale error(s) from the queue: %s",
                self.name,
                self.port.url,
                len(stale),
                self.describe_codes(stale),
            )
        if not self._connecting:  # re-verification after the port was reopened
            for axis in self.axes.values():
                await self.check_motor(x, axis)
                if axis.stage_identity and any(axis.stage_identity):
                    await self.check_stage(x, axis, connecting=False)

    async def _identity(self, x: Exchange) -> str:
        answers = []
        for command in ("VE?", "*IDN?"):
            try:
                reply = await x.query(command)
            except InstrumentTimeout:
                answers.append(f"{command} -> nothing")
                continue
            if "ESP300" in reply.upper():
                return reply
            answers.append(f"{command} -> {reply!r}")
        raise IdentityMismatch(
            f"no ESP300 answered on this port ({'; '.join(answers)}); expected a reply "
            "containing 'ESP300' (e.g. 'ESP300 Version 3.04 07/27/01').",
            instrument=self.name,
            resource=self.port.url,
            fix="check the port path in the profile, the cable, that the controller is on, and "
            "the baud rate (19200 on the ESP300).",
        )

    async def _read_identity(self, x: Exchange) -> str:
        return await self._identity(x)

    async def prepare(self, x: Exchange) -> None:
        """Per axis: motor, stage, units, maximum velocity, profile settings and read-backs."""
        for axis in self.axes.values():
            await self._prepare_axis(x, axis)
        # Only a set command can be refused (as a queued error): TE? once if one went out.
        if any(not command.endswith("?") for command in x.sent):
            codes = await self.pop_errors(x)
            if codes:
                raise self.fault(None, codes, "while configuring the axes at connect")

    async def _prepare_axis(self, x: Exchange, axis: ESP300Axis) -> None:
        n, spec = axis.number, axis.settings
        await self.check_motor(x, axis, connecting=True)
        await self.check_stage(x, axis, connecting=True)
        await x.write(f"{n}SN{ESP300_UNITS[spec.units]}")
        top = wire_backend(axis.max_velocity)
        top.store(await top.read_in(x))
        if spec.velocity is not None:
            axis._check_velocity(spec.velocity, where=" (from the profile)")
        for value, cmd in (
            (spec.velocity, "VA"),
            (spec.acceleration, "AC"),
            (spec.deceleration, "AG"),
        ):
            if value is not None:
                await x.write(f"{n}{cmd}{_format_value(value)}")
        velocity, acceleration = wire_backend(axis.velocity), wire_backend(axis.acceleration)
        readback = wire_backend(axis.readback)
        values = [await b.read_in(x) for b in (velocity, acceleration, readback)]
        for wanted, got, what in (
            (spec.velocity, values[0], f"{n}VA"),
            (spec.acceleration, values[1], f"{n}AC"),
        ):
            if wanted is not None and got != wanted:
                raise InstrumentFault(
                    f"axis {n} ({axis.name}) did not take {what}{_format_value(wanted)} at "
                    f"connect: {what}? reads {got:g}.",
                    code=got,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check the stage's limits and the controller's front panel.",
                )
        for backend, value in zip((velocity, acceleration, readback), values, strict=True):
            backend.store(value)
        target = axis.setpoint._connector.backend
        target.store(values[2])  # at rest, the controller holds the axis where it is

    async def check_motor(self, x: Exchange, axis: ESP300Axis, *, connecting: bool = False) -> bool:
        """``nMO?``; at connect, ``nMO`` first if the profile wants the motor on."""
        n = axis.number
        on = _flag(await x.query(f"{n}MO?"))
        if not on and connecting and self.motor_on:
            await x.write(f"{n}MO")
            on = _flag(await x.query(f"{n}MO?"))
            if not on:
                codes = await self.pop_errors(x)
                raise InstrumentFault(
                    f"axis {n} ({axis.name}): the motor did not turn on after {n}MO"
                    + (f" (queued errors: {self.describe_codes(codes)})" if codes else "")
                    + ".",
                    code=codes[0] if codes else None,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check the motor cable and the front panel; a stage that is not "
                    "connected cannot be enabled.",
                )
        if not on and axis.motor_enabled is not False:
            log.warning(
                "ESP300 %s on %s: the motor of axis %d (%s) is OFF; moves of this axis will "
                "fail until it is turned on (front panel, %dMO, or motor_on=True).",
                self.name,
                self.port.url,
                n,
                axis.name,
                n,
            )
        axis.motor_enabled = on
        return on

    async def _read_stage(
        self, x: Exchange, axis: ESP300Axis, *, known: bool = False
    ) -> tuple[str, str]:
        """``nID?``; silence means a stage (or controller) without ESP data, unless the stage
        answered before (``known``): then it is a lost reply, raised as the timeout it is, not
        taken for another stage."""
        n = axis.number
        try:
            return _stage(await x.query(f"{n}ID?"))
        except InstrumentTimeout:
            if known:
                raise
            codes = [c for c in await self.pop_errors(x) if c != 6]  # 6: no ID? on this one
            if codes:
                raise self.fault(axis, codes, f"after asking the stage identity ({n}ID?)") from None
            log.warning(
                "ESP300 %s on %s: axis %d (%s) did not answer %dID?; its stage is unknown.",
                self.name,
                self.port.url,
                n,
                axis.name,
                n,
            )
            return "", ""

    async def check_stage(
        self, x: Exchange, axis: ESP300Axis, *, connecting: bool
    ) -> tuple[str, str]:
        """The stage's (model, serial); after connect a different stage is refused.

        A stage that was unknown at connect is not asked again (a controller without ``ID?``
        would cost a reply timeout on every configuration read, for nothing).
        """
        known = axis.stage_identity
        if not connecting and known is not None and not any(known):
            return known
        answered = not connecting and known is not None
        stage = await self._read_stage(x, axis, known=answered)
        if answered and stage != known:
            # One garbled reply must not pass for a swapped stage: ask again, and believe the
            # change only if the second answer does not give the known stage back.
            again = await self._read_stage(x, axis, known=True)
            if again != known:
                raise IdentityMismatch(
                    f"axis {axis.number} ({axis.name}): the stage is now {' '.join(again)!r}, "
                    f"not the {' '.join(known)!r} that was there at connect.",
                    instrument=self.name,
                    resource=self.port.url,
                    fix="another stage was plugged into this connector: check the cables; to "
                    "use the new stage, reconnect so its limits and settings are checked again.",
                )
            stage = known
        axis.stage_identity = stage
        for signal, value in zip((axis.stage_model, axis.stage_serial), stage, strict=True):
            wire_backend(signal).store(value)
        return stage

    async def stop(self, success: bool = False) -> None:
        """Stop every axis (``nST`` each), as the v1 controller's ``stop()`` does."""
        await asyncio.gather(*(axis.stop(success=success) for axis in self.axes.values()))

    # --- errors ---------------------------------------------------------------------------------

    async def pop_errors(self, x: Exchange) -> list[int]:
        """``TE?`` until ``0`` (at most the queue's depth): the codes, oldest first."""
        codes = []
        for _ in range(_MAX_QUEUED_ERRORS):
            reply = await x.query("TE?")
            try:
                code = int(reply)
            except ValueError:
                raise x.reply_error("TE?", reply, "an error code") from None
            if code == 0:
                break
            codes.append(code)
        return codes

    async def errors_for(self, x: Exchange, axis: ESP300Axis) -> list[int]:
        """Queued codes that concern ``axis`` (its own and general ones); other axes' codes go
        to their moves (two axes move at once, and the queue is shared)."""
        mine = self._errors_for_axis.pop(axis.number, [])
        for code in await self.pop_errors(x):
            other = code // 100 if code >= 100 else axis.number
            if other == axis.number:
                mine.append(code)
            elif other in self.axes and self.axes[other].movable_logic.moving:
                self._errors_for_axis.setdefault(other, []).append(code)
            else:
                log.warning(
                    "ESP300 %s: error %d (%s) for idle axis %d",
                    self.name,
                    code,
                    esp300_error_meaning(code),
                    other,
                )
        return mine

    @staticmethod
    def describe_codes(codes: list[int]) -> str:
        return ", ".join(f"{c} ({esp300_error_meaning(c)})" for c in codes)

    def fault(self, axis: ESP300Axis | None, codes: list[int], context: str) -> InstrumentFault:
        """The v1 driver's error for queued codes: axis, code, meaning and fix."""
        code = codes[0]
        sub = code % 100 if code >= 100 else None
        who = f"axis {axis.number} ({axis.name})" if axis is not None else "the controller"
        if code >= 100 and (axis is None or code // 100 != axis.number):
            who = f"axis {code // 100}"
        more = f"; also queued: {self.describe_codes(codes[1:])}" if len(codes) > 1 else ""
        if sub is not None:
            fix = _AXIS_FIXES.get(sub, "see the ESP300 manual (error appendix).")
            if sub == 13:
                fix = fix.replace("nMO", f"{code // 100}MO")
        elif code == 7:
            fix = (
                "a value is outside what the controller accepts (velocity above the stage "
                "maximum, position beyond travel): correct it."
            )
        else:
            fix = "see the ESP300 manual (error appendix)."
        return InstrumentFault(
            f"{who} reported error {code}: {esp300_error_meaning(code)} {context}{more}.",
            code=code,
            instrument=self.name,
            resource=self.port.url,
            fix=fix,
        )


def _axis_name(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise settings_error(
            f"{value!r} is not an axis name",
            "use lower case letters, digits and '_' (e.g. 'x' or 'focus'): the axis device id "
            "is <instrument id>_<name>",
        )
    return value


_AxisName = Annotated[str, AfterValidator(_axis_name)]

REPLY_DECIMALS = 5
"""The controller reports every value with five decimals (``12.34500``, INSTRUMENTS.md)."""


def _reported_as_given(value: float) -> float:
    # Connect reads VA/AC back and refuses a value the controller did not take: a profile value
    # with more decimals than the reply carries (1.765625 reads 1.76562), or one so small that
    # it is sent as 0, would pass config check and then fail every start-up.
    if round(value, REPLY_DECIMALS) != value:
        raise settings_error(
            f"{value!r} has more than {REPLY_DECIMALS} decimals, the resolution the ESP300 "
            "reports; connect could not confirm the controller took it",
            f"round it to {REPLY_DECIMALS} decimals (at least 0.{'0' * (REPLY_DECIMALS - 1)}1)",
        )
    return value


_Rate = Annotated[float, AfterValidator(_reported_as_given)]

Esp300Units = Literal[tuple(ESP300_UNITS)]  # type: ignore[valid-type]


def _check_limits(low: float, high: float, what: str) -> None:
    if not low < high:
        raise settings_error(
            f"{what}: low_limit {low:g} is not below high_limit {high:g}",
            "swap the limits or correct one of them",
            key="high_limit",
        )


class Esp300Axis(DriverSettings):
    """One axis of an ESP300 (``esp300.axes`` entry). Device id: ``<instrument id>_<name>``."""

    number: int = Field(ge=1, le=3, description="Axis number on the controller (1-3).")
    name: _AxisName = Field(
        description="Axis name; the axis device id is `<instrument id>_<name>`."
    )
    units: Esp300Units = Field("mm", description="Axis units, set on the controller with `SN`.")
    velocity: _Rate | None = Field(None, gt=0, description="Velocity (units/s), `VA`.")
    acceleration: _Rate | None = Field(None, gt=0, description="Acceleration (units/s²), `AC`.")
    deceleration: _Rate | None = Field(None, gt=0, description="Deceleration (units/s²), `AG`.")
    low_limit: float = Field(description="Lowest position a plan may request (software limit).")
    high_limit: float = Field(description="Highest position a plan may request.")

    @model_validator(mode="after")
    def _ordered(self) -> Esp300Axis:
        _check_limits(self.low_limit, self.high_limit, f"axis {self.name}")
        return self


class Esp300Settings(DriverSettings):
    """``[instruments.esp300]``: the axes connected to the controller."""

    axes: list[Esp300Axis] = Field(
        min_length=1, max_length=3, description="1 to 3 axes with unique numbers and names."
    )
    motor_on: bool = Field(
        False,
        description="Turn every axis motor on at connect (`nMO`); off: a motor found off is "
        "reported and its moves are refused.",
    )

    @model_validator(mode="after")
    def _unique(self) -> Esp300Settings:
        _unique_by(self.axes, "number", "axes", "axis number")
        _unique_by(self.axes, "name", "axes", "axis name")
        return self


def _unique_by(items: list[Any], attr: str, where: str, label: str) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            raise settings_error(
                f"{label} {value!r} appears twice ({where}[{seen[value]}] and {where}[{i}])",
                f"give every entry of {where} its own {attr}",
                key=f"{where}[{i}].{attr}",
            )
        seen[value] = i


def build(
    port: LeasedPort, *, name: str, settings: Esp300Settings, timeout: float
) -> ESP300Controller:
    """The controller of one profile entry with its axes, not connected (the runtime connects
    it on the RunEngine's loop); the entry's ``timeout`` is how long a reply may take."""
    return ESP300Controller(
        port, name=name, axes=settings.axes, motor_on=settings.motor_on, timeout=timeout
    )


def _naming_the_axis(error: ConfigError, names: list[Any]) -> ConfigError:
    """``error`` about ``axes[i]`` saying which axis that is, when the axes were given by name
    (``{"x": {...}, "y": {...}}``: the i-th name)."""
    found = re.match(r"axes\[(\d+)\]", error.key or "")
    if found is None or int(found.group(1)) >= len(names):
        return error
    name = names[int(found.group(1))]
    what = error.what.removeprefix(f"{error.key}: ")  # ConfigError puts its key in front
    if what.startswith((f"axis {name!r}:", f"axis {name}:")):  # the model's words name it
        return error
    return ConfigError(
        f"axis {name!r}: {what}",
        key=error.key,
        instrument=error.instrument,
        resource=error.resource,
        fix=error.fix,
    )


def _axis_entries(
    axes: Mapping[str, Mapping[str, Any]] | Sequence[Esp300Axis | Mapping[str, Any]],
    *,
    instrument: str,
    resource: str,
) -> Any:
    """The constructor's ``axes`` as the table's ``axes`` list, for the model to judge: the
    entries as given, or ``{name: keys}`` as one entry per name (a mapping's order)."""
    if not isinstance(axes, Mapping):
        return list(axes) if isinstance(axes, list | tuple) else axes
    entries = []
    for label, keys in axes.items():
        if not isinstance(keys, Mapping):
            entries.append(keys)  # the model says what an entry must be
            continue
        if "name" in keys and keys["name"] != label:
            raise ConfigError(
                f"axis {label!r}: its entry names itself {keys['name']!r}.",
                instrument=instrument,
                resource=resource,
                key=f"axes[{len(entries)}].name",
                fix="leave name out of the entry: the key it is given under is its name.",
            )
        entries.append({**keys, "name": label})
    return entries


def axes_of(controller: ESP300Controller) -> dict[str, ESP300Axis]:
    """The axes, by the device ids the lab addresses them with (``sim_stage_x``)."""
    return {axis.name: axis for axis in controller.axes.values()}


register_driver(
    "esp300",
    settings=Esp300Settings,
    build=build,
    simulator="esp300",
    parts=axes_of,
    device=ESP300Controller,
    entry=ProfileEntry(
        "Newport ESP300 motion controller, 1-3 axes on one RS-232 port.",
        table_description="The axes (`[instruments.esp300]`).",
        defaults={"baud_rate": EntryDefault(19200, "Baud rate (ESP300: 19200).")},
        part_names=lambda settings: [axis.name for axis in settings.axes],
    ),
)
