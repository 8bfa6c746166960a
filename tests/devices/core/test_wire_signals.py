"""Unit tier of the wire-device core: no port, no simulator, no thread.

A small made-up instrument (an oven: ``*IDN?``, ``T?`` temperature, ``S?``/``Snnn.n`` setpoint)
is declared on the core and driven through :class:`ReplayPort`, which replays (sent, reply) byte
pairs and fails on any unexpected byte, so each test states the exact bytes a behaviour costs.
ophyd-async's mock mode covers what needs no bytes at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar

import pytest
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.core import init_devices
from ophyd_async.testing import get_mock_put, set_mock_value

from daqbridge.devices.core import (
    Exchange,
    ReplayMismatch,
    ReplayPort,
    SetNotConfirmed,
    WireCommand,
    WireDevice,
    wire_signal_r,
    wire_signal_rw,
)
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)

IDN = (b"*IDN?\n", b"ACME,OVEN-3,42,1.0\n")


class Oven(WireDevice):
    """A made-up line instrument, just enough to exercise every part of the core."""

    model: ClassVar[str] = "OVEN-3"

    def __init__(self, port: Any, name: str = "oven") -> None:
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.temperature = wire_signal_r(
                float,
                self,
                WireCommand(
                    query="T?",
                    parse=float,
                    units="degC",
                    precision=2,
                    limits=(0.0, 300.0),
                    what="a temperature",
                ),
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.setpoint = wire_signal_rw(
                float,
                self,
                WireCommand(
                    query="S?",
                    parse=float,
                    set_command="S{:.1f}",
                    validate=lambda v: self.check_number(v, what="setpoint", low=0, high=300),
                    units="degC",
                ),
            )
        super().__init__(port, name=name, timeout=0.2)

    async def identify(self, x: Exchange) -> None:
        reply = await x.query("*IDN?")
        if "OVEN-3" not in reply:
            raise IdentityMismatch(
                f"*IDN? -> {reply!r}", instrument=self.name, resource=self.port.url
            )


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run one test body on a fresh loop, bounded: a hang fails instead of stalling the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


def connected(*pairs: tuple[bytes, bytes | None]) -> tuple[ReplayPort, Oven]:
    """An oven past its connect (the *IDN? exchange), with ``pairs`` to follow."""
    port = ReplayPort([IDN, *pairs], url="replay://oven")
    return port, Oven(port)


# --- reading ------------------------------------------------------------------------------------


def test_a_read_sends_the_query_once_in_one_lease_and_returns_the_reply():
    port, oven = connected((b"T?\n", b"21.50\n"))

    async def body():
        await oven.connect()
        return await oven.read()

    reading = run(body())
    assert reading["oven_temperature"]["value"] == 21.5
    assert port.transactions == [b"*IDN?\n", b"T?\n"]
    port.assert_done()


def test_a_set_and_its_read_back_share_one_lease():
    port, oven = connected((b"S150.0\n", None), (b"S?\n", b"150.0\n"))

    async def body():
        await oven.connect()
        await oven.setpoint.set(150)

    run(body())
    assert port.transactions[-1] == b"S150.0\nS?\n"
    port.assert_done()


def test_a_read_back_that_disagrees_fails_and_the_commanded_value_is_never_reported():
    port, oven = connected((b"S?\n", b"20.0\n"), (b"S150.0\n", None), (b"S?\n", b"20.0\n"))
    seen: list[float] = []

    async def body():
        await oven.connect()
        await oven.setpoint.get_value()
        oven.setpoint.subscribe_reading(lambda r: seen.append(r["oven_setpoint"]["value"]))
        with pytest.raises(SetNotConfirmed) as err:
            await oven.setpoint.set(150)
        return err.value

    err = run(body())
    assert err.wanted == 150 and err.got == 20.0
    assert "'oven'" in str(err) and "replay://oven" in str(err) and "'S150.0'" in str(err)
    assert seen == [20.0]  # the subscriber heard the meter's last answer, never the command
    port.assert_done()


@pytest.mark.parametrize("value", [-1, 301, float("nan"), "150\nS0", None])
def test_a_value_the_validator_refuses_sends_nothing(value):
    port, oven = connected()

    async def body():
        await oven.connect()
        with pytest.raises(ValueRejected) as err:
            await oven.setpoint.set(value)
        return err.value

    err = run(body())
    assert "'oven'" in str(err) and "replay://oven" in str(err)
    assert port.transactions == [b"*IDN?\n"]  # connect only


def test_a_command_smuggling_a_terminator_is_refused_by_the_exchange():
    port, oven = connected()

    async def body():
        async with oven.transaction() as x:
            await x.query("T?\nS0")

    with pytest.raises(ValueRejected, match="terminator"):
        run(body())
    assert port.transactions == [b""]


def test_a_garbled_reply_names_instrument_port_and_command():
    port, oven = connected((b"T?\n", b"2#.5\n"))

    async def body():
        await oven.connect()
        await oven.temperature.get_value()

    with pytest.raises(ReplyError) as err:
        run(body())
    msg = str(err.value)
    assert "'oven'" in msg and "replay://oven" in msg and "'T?'" in msg and "'2#.5'" in msg


def test_silence_is_a_timeout_naming_the_command():
    port, oven = connected((b"T?\n", None))

    async def body():
        await oven.connect()
        async with oven.transaction() as x:
            await oven.temperature._connector.backend.read_in(x)

    with pytest.raises(InstrumentTimeout, match=r"no reply to 'T\?'") as err:
        run(body())
    assert "'oven'" in str(err.value) and "replay://oven" in str(err.value)


def test_through_a_signal_silence_stays_the_cause_of_ophyd_asyncs_timeout():
    # ophyd-async's Signal methods turn every TimeoutError (InstrumentTimeout is one) into
    # TimeoutError(source); our error, naming instrument and command, is kept as its cause.
    port, oven = connected((b"T?\n", None))

    async def body():
        await oven.connect()
        await oven.temperature.get_value()

    with pytest.raises(TimeoutError, match="OVEN-3 replay://oven T") as err:
        run(body())
    assert isinstance(err.value.__cause__, InstrumentTimeout)
    assert "'oven'" in str(err.value.__cause__)


def test_echoed_commands_and_stale_input_are_not_taken_as_replies():
    port, oven = connected((b"S100.0\n", b"S100.0\n"), (b"S?\n", b"S?\n100.0\n"))

    async def body():
        await oven.connect()
        port.inject(b"99.9\n")  # a late reply of someone else's query, drained first
        await oven.setpoint.set(100)  # read back 99.9 or an echo, it would fail

    run(body())
    port.assert_done()


def test_read_together_asks_every_signal_in_one_lease_keyed_in_their_order():
    port, oven = connected((b"S?\n", b"80.0\n"), (b"T?\n", b"21.50\n"))

    async def body():
        await oven.connect()
        return await oven.read_together([oven.setpoint, oven.temperature])

    readings = run(body())
    assert port.transactions[-1] == b"S?\nT?\n"
    assert [(key, r["value"]) for key, r in readings.items()] == [
        ("oven_setpoint", 80.0),
        ("oven_temperature", 21.5),
    ]
    port.assert_done()


def test_read_together_stores_no_reading_of_a_point_whose_later_reply_is_garbled():
    """The temperature answered, the setpoint did not: the temperature keeps the reading it had
    before, so a subscriber never sees half of a point that failed."""
    port, oven = connected((b"T?\n", b"21.50\n"), (b"T?\n", b"22.00\n"), (b"S?\n", b"8#.0\n"))

    async def body():
        await oven.connect()
        await oven.read()
        with pytest.raises(ReplyError, match="S"):
            await oven.read_together([oven.temperature, oven.setpoint])
        return oven.temperature._connector.backend.last_reading

    assert run(body())["value"] == 21.5
    port.assert_done()


# --- description --------------------------------------------------------------------------------


def test_the_descriptor_names_model_port_and_command_with_units_precision_limits():
    port, oven = connected()

    async def body():
        return await oven.describe(), await oven.describe_configuration()

    described, config = run(body())
    assert described == {
        "oven_temperature": {
            "dtype": "number",
            "shape": [],
            "source": "OVEN-3 replay://oven T?",
            "units": "degC",
            "precision": 2,
            "limits": {"control": {"low": 0.0, "high": 300.0}},
        }
    }
    assert config["oven_setpoint"]["source"] == "OVEN-3 replay://oven S?"
    assert oven.hints == {"fields": ["oven_temperature"]}
    assert port.transactions == []  # describing asks the instrument nothing


# --- identity and re-verification -----------------------------------------------------------------


def test_connect_refuses_an_instrument_whose_identity_does_not_match():
    port = ReplayPort([(b"*IDN?\n", b"ACME,KETTLE,1,1\n")], url="replay://oven")
    oven = Oven(port)
    with pytest.raises(IdentityMismatch, match="KETTLE"):
        run(oven.connect())


def test_after_a_reopen_the_next_transaction_proves_the_instrument_first():
    port, oven = connected((b"T?\n", b"21.0\n"), IDN, (b"T?\n", b"22.0\n"))

    async def body():
        await oven.connect()
        first = await oven.temperature.get_value()
        port.reopen()
        return first, await oven.temperature.get_value()

    assert run(body()) == (21.0, 22.0)
    assert port.transactions[-1] == b"*IDN?\nT?\n"  # one lease: identity, then the query
    assert oven.verified_generation == port.generation
    port.assert_done()


def test_a_port_without_the_lease_interface_is_a_config_error():
    with pytest.raises(ConfigError, match="async leases"):
        Oven("/dev/ttyUSB0")


def test_a_lost_port_names_the_instrument():
    class LostPort(ReplayPort):
        def async_lease(self, owner: str, timeout: float = 5.0):
            raise PortUnavailable(self.url, "lost during read")

    oven = Oven(LostPort([], url="replay://lost"))
    with pytest.raises(PortUnavailable) as err:
        run(oven.temperature.get_value())
    assert err.value.instrument == "oven" and "replay://lost" in str(err.value)


# --- the replay transport itself ------------------------------------------------------------------


def test_the_replay_port_fails_on_the_first_unexpected_byte_and_on_unused_pairs():
    port = ReplayPort([(b"T?\n", b"1\n"), (b"S?\n", b"2\n")])

    async def body():
        async with port.async_lease("test") as lease:
            assert await lease.query(b"T?\n", b"\n", 0.1) == b"1"
            await lease.write(b"X")

    with pytest.raises(ReplayMismatch, match="expected b'S\\?\\\\n', got b'X'"):
        run(body())
    with pytest.raises(ReplayMismatch):
        port.assert_done()


# --- mock mode: ophyd-async's unit tier, no bytes at all ----------------------------------------


def test_mock_mode_needs_no_port_traffic():
    port = ReplayPort([], url="replay://oven")

    async def body():
        async with init_devices(mock=True):
            oven = Oven(port)
        set_mock_value(oven.temperature, 42.0)
        reading = await oven.read()
        await oven.setpoint.set(80.0)
        return reading, get_mock_put(oven.setpoint)

    reading, put = run(body())
    assert reading["oven_temperature"]["value"] == 42.0
    put.assert_called_once_with(80.0)
    assert port.transactions == []
