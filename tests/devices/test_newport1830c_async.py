"""Newport 1830-C on ophyd-async: pinned to the transcript, checked against the simulator on a
real pty, and run beside the v1 device on the same port under one RunEngine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import bluesky.plans as bp
import pytest
from bluesky.run_engine import call_in_bluesky_event_loop

from daqbridge.devices.core import ReplayPort
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.devices.newport1830c_async import Newport1830CAsync
from daqbridge.errors import InstrumentFault, PortUnavailable, ReplyError, ValueRejected
from daqbridge.sim import serve_pty
from tests.sim.test_newport1830c import transcript


def on_loop(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    return call_in_bluesky_event_loop(coro, timeout=timeout)


async def put(signal, value) -> None:
    """``signal.set(value)`` awaited on the loop (set() makes its task where it is called)."""
    await signal.set(value)


def replay(*sections: str) -> ReplayPort:
    pairs = [pair for section in sections for pair in transcript(section)[1]]
    return ReplayPort(pairs, url="replay://newport1830c")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


@pytest.fixture
def meter(serial_pool, RE):  # noqa: N803 - the RunEngine's loop must be running
    """``meter(**sim_options)`` -> (server, port): the simulator on a pty, opened in the pool."""
    opened = []

    def make(**options):
        options.setdefault("speed", 50.0)
        options.setdefault("noise", 0.0)
        options.setdefault("response_time", 0.0)
        cm = serve_pty("newport1830c", **options)
        server = cm.__enter__()
        opened.append(cm)
        return server, serial_pool.open(server.path, baudrate=9600)

    yield make
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


def connected(port, name: str = "pm", **settings) -> Newport1830CAsync:
    device = Newport1830CAsync(port, name=name, timeout=0.3, **settings)
    on_loop(device.connect())
    return device


# --- pinned to tests/transcripts/newport1830c.yaml ----------------------------------------------


def test_connect_sends_the_transcripts_connect_section_in_order_in_one_lease():
    port = replay("connect")
    run(Newport1830CAsync(port, name="pm").connect())
    port.assert_done()  # every pair used, in order, nothing else sent
    assert len(port.transactions) == 1


def test_a_reading_is_clear_read_status_in_one_lease():
    port = replay("connect", "point_valid")

    async def body():
        pm = Newport1830CAsync(port, name="pm")
        await pm.connect()
        return await pm.read()

    assert run(body())["pm_power"]["value"] == 0.75e-9
    port.assert_done()
    assert port.transactions[-1] == b"C\nD?\nQ?\n"


@pytest.mark.parametrize(
    ("section", "code"), [("point_saturated", "SAT"), ("point_over_range", "OVER")]
)
def test_transcript_saturated_or_over_range_is_never_a_reading(section, code):
    port = replay("connect", section)

    async def body():
        pm = Newport1830CAsync(port, name="pm")
        await pm.connect()
        await pm.read()

    with pytest.raises(InstrumentFault) as err:
        run(body())
    assert err.value.code == code and "'pm'" in str(err.value)
    port.assert_done()


def test_wavelength_goes_out_in_four_digits_and_is_read_back_in_the_same_lease():
    port = replay("connect")
    port.extend(transcript("wavelength")[1][:2])  # W0633 (silent), W? -> 0633

    async def body():
        pm = Newport1830CAsync(port, name="pm")
        await pm.connect()
        await pm.wavelength.set(633)

    run(body())
    port.assert_done()
    assert port.transactions[-1] == b"W0633\nW?\n"


# --- against the simulator on a pty -------------------------------------------------------------


def test_a_reading_equals_the_simulators_own_truth(meter):
    server, port = meter(input_power=3.7e-7, power_range=4, wavelength=633)
    pm = connected(port)
    sim = server.simulator
    power = on_loop(pm.read())["pm_power"]["value"]
    with sim.lock:
        truth = float(sim.reading())  # what the meter displays, formatted and parsed back
        settings = (sim.wavelength, sim.power_range, sim.filter, int(sim.attenuator))
    assert power == truth
    config = on_loop(pm.read_configuration())
    assert (
        tuple(config[f"pm_{k}"]["value"] for k in ("wavelength", "range", "filter", "attenuator"))
        == settings
    )


def test_describe_equals_the_v1_devices_for_the_same_port(meter):
    _, port = meter()
    v1 = Newport1830C(port, name="sim_meter", timeout=0.3)
    v1.connect()
    try:
        pm = connected(port, name="sim_meter")
        assert on_loop(pm.describe()) == dict(v1.describe())
        assert on_loop(pm.describe_configuration()) == dict(v1.describe_configuration())
        assert pm.hints == v1.hints
    finally:
        v1.close()


def test_count_with_v1_and_async_devices_on_one_port(meter, RE, docs):  # noqa: N803
    server, port = meter(input_power=4.2e-6, power_range=5)
    v1 = Newport1830C(port, name="pm_v1", timeout=0.3)
    v1.connect()
    try:
        pm = connected(port, name="pm_async")
        RE(bp.count([v1, pm], 5))
    finally:
        v1.close()
    docs.validate()
    events = docs.events()
    assert len(events) == 5
    for event in events:
        assert event["data"]["pm_v1_power"] == event["data"]["pm_async_power"]
        assert event["data"]["pm_async_power"] == pytest.approx(4.2e-6, rel=1e-3)
    assert server.simulator.protocol_errors == []


def test_gathered_reads_on_one_port_do_not_interleave(meter):
    server, port = meter(input_power=1e-6, power_range=4)
    pm = connected(port)
    sim = server.simulator
    before = len(sim.received_lines)

    async def both():
        return await asyncio.gather(pm.read(), pm.read(), pm.read_configuration())

    on_loop(both())
    lines = sim.received_lines[before:]
    readings = [i for i, line in enumerate(lines) if line == "C"]
    assert len(readings) == 2
    for i in readings:  # each reading's three commands arrived back to back
        assert lines[i : i + 3] == ["C", "D?", "Q?"]
    assert sorted(line for line in lines if line not in ("C", "D?", "Q?")) == [
        "A?",
        "F?",
        "R?",
        "W?",
    ]
    assert sim.protocol_errors == []


def test_a_garbled_reply_names_the_meter_and_the_port(meter):
    server, port = meter(input_power=7.5e-7, power_range=4)
    pm = connected(port)
    server.simulator.faults.garble_next = 1
    with pytest.raises(Exception) as err:  # noqa: B017 - the cause is checked below
        on_loop(pm.read())
    cause = err.value if isinstance(err.value, ReplyError) else err.value.__cause__
    assert isinstance(cause, ReplyError)
    assert "'pm'" in str(cause) and server.path in str(cause) and "D?" in str(cause)
    assert on_loop(pm.read())["pm_power"]["value"] == pytest.approx(7.5e-7, rel=1e-3)


@pytest.mark.parametrize("nm", [299, 1101, 633.5, "800\nW0300"])
def test_a_wavelength_outside_300_to_1100_is_refused_before_anything_is_sent(meter, nm):
    server, port = meter()
    pm = connected(port)
    sent = list(server.simulator.received_lines)
    with pytest.raises(ValueRejected) as err:
        on_loop(put(pm.wavelength, nm))
    assert "'pm'" in str(err.value) and server.path in str(err.value)
    assert server.simulator.received_lines == sent


def test_the_meter_is_reverified_after_the_port_comes_back(meter):
    server, port = meter(input_power=2e-6, power_range=5)
    pm = connected(port)
    server.unplug()
    with pytest.raises(Exception) as err:  # noqa: B017 - PortUnavailable, or a timeout
        on_loop(pm.read())
    assert server.path in str(err.value) or server.path in str(err.value.__cause__)
    server.replug()
    server.simulator.units = 2  # power-cycled into dBm meanwhile
    assert on_loop(pm.read())["pm_power"]["value"] == pytest.approx(2e-6, rel=1e-3)
    assert server.simulator.units == 1  # identity re-run: U1 forced again
    assert pm.verified_generation == port.generation


def test_auto_range_is_confirmed_and_range_reads_the_range_in_use(meter):
    server, port = meter(input_power=3e-5, power_range=2)
    pm = connected(port)
    on_loop(put(pm.range, 0))  # R0: confirmed by R? naming a range 1-8
    power = on_loop(pm.power.get_value())
    assert server.simulator.auto_range
    assert on_loop(pm.range.get_value()) == server.simulator.power_range == 6
    assert power == pytest.approx(3e-5, rel=1e-3)


def test_lost_port_error_names_the_meter(meter):
    server, port = meter()
    pm = connected(port)
    port.close()
    with pytest.raises(PortUnavailable) as err:
        on_loop(pm.read())
    assert err.value.instrument == "pm"


def test_connect_turns_echo_off_and_forces_watts(meter):
    server, port = meter(units=2, echo_on_power_up=True, input_power=2.5e-7, power_range=4)
    pm = connected(port)
    sim = server.simulator
    assert sim.units == 1 and not sim.echo_enabled
    assert on_loop(pm.power.get_value()) == pytest.approx(2.5e-7, rel=1e-3)


def test_echo_that_cannot_be_turned_off_still_reads_and_sets_right(meter):
    server, port = meter(input_power=3.3e-7, power_range=4, echo=True)
    pm = connected(port)
    on_loop(put(pm.wavelength, 900))
    assert server.simulator.wavelength == 900
    for _ in range(3):
        assert on_loop(pm.power.get_value()) == pytest.approx(3.3e-7, rel=1e-3)
    assert on_loop(pm.wavelength.get_value()) == 900
