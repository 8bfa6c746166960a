"""Newport 1830-C power meter (ophyd-async): pinned to the transcript byte for byte (ReplayPort),
against the simulator on real ptys, exact replies from a peer, and in plans on a RunEngine.

The device lives on the RunEngine's loop (the ``RE`` fixture starts it); the tests reach it from
their own thread with :func:`daqbridge.devices.core.call_sync`, as the lab's front ends do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
from bluesky.protocols import Configurable, Readable, Triggerable
from bluesky.utils import FailedStatus

from daqbridge.devices.core import ReplayPort, call_sync
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.sim import serve_pty
from tests.sim.test_newport1830c import transcript as sim_transcript


def on_loop(work: Any, timeout: float = 10.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    return call_sync(work, timeout=timeout)


def put(signal: Any, value: Any) -> None:
    """``signal.set(value)``, its status made and awaited on the loop."""
    on_loop(lambda: signal.set(value))


def get(signal: Any) -> Any:
    """The value, asked of the meter now."""
    return on_loop(signal.get_value())


def power(pm: Newport1830C) -> float:
    """A reading: ``C``, ``D?``, ``Q?`` in one lease."""
    return on_loop(pm.read())[f"{pm.name}_power"]["value"]


def last(signal: Any) -> Any:
    """What the signal last heard from the meter (None: nothing), without asking again."""
    reading = signal._connector.backend.last_reading
    return None if reading is None else reading["value"]


def connect(pm: Newport1830C) -> Newport1830C:
    on_loop(pm.connect(timeout=5))
    return pm


@pytest.fixture
def meter(serial_pool, RE):  # noqa: N803 - the RunEngine's loop must be running
    """``meter(device_options, **sim_options)`` -> (server, meter), connected."""
    opened = []

    def make(device_options=None, *, connect_it=True, **options):
        options.setdefault("speed", 50.0)
        options.setdefault("noise", 0.0)
        options.setdefault("response_time", 0.0)
        cm = serve_pty("newport1830c", **options)
        server = cm.__enter__()
        opened.append((cm, None))
        port = serial_pool.open(server.path, baudrate=9600)
        device = Newport1830C(port, name="pm", timeout=0.3, **(device_options or {}))
        opened[-1] = (cm, device)
        if connect_it:
            connect(device)
        return server, device

    yield make
    for cm, device in reversed(opened):
        if device is not None:
            device.close()
        cm.__exit__(None, None, None)


@pytest.fixture
def peer_meter(serial_pool, transcript, RE):  # noqa: N803
    """``peer_meter(replies)`` -> (peer, meter not connected): exact replies from a peer."""
    made = []

    def make(replies, timeout=0.3):
        peer = transcript(replies)
        pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=timeout)
        made.append(pm)
        return peer, pm

    yield make
    for pm in made:
        pm.close()


def test_connect_forces_echo_off_and_watts(meter):
    server, pm = meter(units=2, echo_on_power_up=True, input_power=2.5e-7, wavelength=633)
    sim = server.simulator
    assert sim.units == 1 and not sim.echo_enabled
    assert sim.received_lines[:2] == ["E0", "U1"]
    assert last(pm.wavelength) == 633 and last(pm.filter) == 3 and last(pm.attenuator) == 0
    assert power(pm) == pytest.approx(2.5e-7, rel=1e-3)
    for proto in (Readable, Configurable):
        assert isinstance(pm, proto)
    desc = on_loop(pm.describe())["pm_power"]
    assert desc["units"] == "W" and desc["dtype"] == "number" and server.path in desc["source"]
    assert pm.hints == {"fields": ["pm_power"]}


def test_describe_is_the_v1_meters_key_for_key(meter):
    """The descriptor the ophyd v1 meter recorded, so the catalog cannot tell the generations
    apart (the v1 device was compared with this one side by side before it was retired)."""
    server, pm = meter()
    source = f"1830-C {server.path}"
    assert on_loop(pm.describe()) == {
        "pm_power": {"dtype": "number", "shape": [], "source": f"{source} D?", "units": "W"}
    }
    assert on_loop(pm.describe_configuration()) == {
        "pm_wavelength": {
            "dtype": "integer",
            "shape": [],
            "source": f"{source} W?",
            "units": "nm",
        },
        "pm_range": {"dtype": "integer", "shape": [], "source": f"{source} R?"},
        "pm_filter": {"dtype": "integer", "shape": [], "source": f"{source} F?"},
        "pm_attenuator": {"dtype": "integer", "shape": [], "source": f"{source} A?"},
    }
    # in the v1 meter's order too: a descriptor's object_keys are lists
    assert list(on_loop(pm.describe_configuration())) == [
        "pm_wavelength",
        "pm_range",
        "pm_filter",
        "pm_attenuator",
    ]


def test_its_own_read_gives_what_ophyd_async_would(meter):
    """``read()`` skips StandardReadable's tasks; it must still give exactly the readings the
    descriptor declares, each from the instrument (the simulator's power), and the subscriber
    of ``power`` sees each one as ophyd-async's read would show it."""
    from ophyd_async.core import StandardReadable

    server, pm = meter(input_power=3.0e-7)
    seen = []
    on_loop(_subscribed(pm.power, seen.append))
    ours = on_loop(pm.read())
    theirs = on_loop(StandardReadable.read(pm))
    assert list(ours) == list(theirs) == list(on_loop(pm.describe())) == ["pm_power"]
    assert ours["pm_power"]["value"] == pytest.approx(3.0e-7, rel=1e-3)
    assert ours["pm_power"]["timestamp"] < theirs["pm_power"]["timestamp"]  # both asked
    assert [r["pm_power"]["timestamp"] for r in seen][-2:] == [
        ours["pm_power"]["timestamp"],
        theirs["pm_power"]["timestamp"],
    ]


def test_a_mock_connected_meter_reads_through_ophyd_async(RE):  # noqa: N803
    from ophyd_async.core import set_mock_value

    pm = Newport1830C(ReplayPort({}), name="pm")
    on_loop(pm.connect(mock=True))
    set_mock_value(pm.power, 1.5e-6)
    assert on_loop(pm.read())["pm_power"]["value"] == 1.5e-6


def test_a_count_reads_the_meter_afresh_with_no_trigger_or_wait(meter, RE):  # noqa: N803
    """The meter measures all the time: it has no trigger, so bluesky sends no trigger and no
    wait for it, and each point's value is the one the meter gave for that point's read."""
    server, pm = meter(input_power=1.0e-7)
    sim = server.simulator
    commands: list[str] = []
    values: list[float] = []

    def next_point(name: str, doc: dict) -> None:
        if name == "event":
            values.append(doc["data"]["pm_power"])
            sim.set_input_power(sim.input_power * 2)  # what the next read must see

    RE.msg_hook = lambda msg: commands.append(msg.command)
    try:
        RE(bp.count([pm], 3), next_point)
    finally:
        RE.msg_hook = None
    assert not isinstance(pm, Triggerable)
    points = commands[commands.index("open_run") : commands.index("close_run")]
    assert points.count("read") == 3
    assert "trigger" not in points and "wait" not in points, points
    assert values == pytest.approx([1.0e-7, 2.0e-7, 4.0e-7], rel=1e-3)


async def _subscribed(signal: Any, callback: Any) -> None:
    signal.subscribe_reading(callback)


def test_profile_settings_are_applied_and_read_back(meter):
    server, pm = meter({"wavelength_nm": 1064, "range": 5, "filter": "medium", "attenuator": True})
    sim = server.simulator
    assert (sim.wavelength, sim.power_range, sim.filter, sim.attenuator) == (1064, 5, 2, True)
    conf = on_loop(pm.read_configuration())
    assert conf["pm_wavelength"]["value"] == 1064 and conf["pm_range"]["value"] == 5
    assert conf["pm_filter"]["value"] == 2 and conf["pm_attenuator"]["value"] == 1


def test_count_and_settings_in_plans(meter, RE, docs):  # noqa: N803
    server, pm = meter({"range": 0}, input_power=4.2e-6)
    RE(bps.mv(pm.wavelength, 532, pm.filter, 1))
    RE(bp.count([pm], 3))
    RE(bps.mv(pm.range, 0, pm.attenuator, 0))
    docs.validate()
    events = docs.events()
    assert len(events) == 3
    assert all(e["data"]["pm_power"] == pytest.approx(4.2e-6, rel=1e-3) for e in events)
    desc = docs.of("descriptor")[0]
    assert desc["configuration"]["pm"]["data"]["pm_wavelength"] == 532
    assert desc["configuration"]["pm"]["data"]["pm_filter"] == 1
    assert server.simulator.wavelength == 532 and server.simulator.filter == 1


@pytest.mark.parametrize(
    ("signal", "value"),
    [
        ("wavelength", 250),
        ("wavelength", 1200),
        ("wavelength", 633.5),
        ("wavelength", "800\nW0300"),
        ("range", 9),
        ("filter", "turbo"),
        ("filter", 4),
        ("attenuator", 2),
    ],
)
def test_bad_values_are_refused_before_the_wire(meter, signal, value):
    server, pm = meter()
    before = list(server.simulator.received_lines)
    with pytest.raises(ValueRejected) as err:
        put(getattr(pm, signal), value)
    assert "'pm'" in str(err.value) and server.path in str(err.value)
    assert server.simulator.received_lines == before


def test_bad_constructor_settings(serial_pool):
    """Constructor settings are the profile's keys, refused as the profile check refuses them
    (tests/config/test_driver_settings.py proves the two agree)."""
    with serve_pty("newport1830c") as server:
        port = serial_pool.open(server.path, baudrate=9600)
        with pytest.raises(ConfigError, match="wavelength"):
            Newport1830C(port, name="pm", wavelength_nm=2000)
        with pytest.raises(ConfigError, match="units"):
            Newport1830C(port, name="pm", units="dBm")
        with pytest.raises(ConfigError, match="async leases"):
            Newport1830C(server.path, name="pm")


def test_over_range_is_an_error_naming_the_range(meter, RE):  # noqa: N803
    server, pm = meter({"range": 3}, input_power=1e-6)  # R3 full scale 250 nW
    with pytest.raises(InstrumentFault) as err:
        power(pm)
    msg = str(err.value)
    assert "over range on R3" in msg and "higher range or enable auto range" in msg
    assert err.value.code == "OVER"
    with pytest.raises((FailedStatus, InstrumentFault)) as err:
        RE(bp.count([pm], 1))
    fault = err.value if isinstance(err.value, InstrumentFault) else err.value.__cause__
    assert isinstance(fault, InstrumentFault) and "over range on R3" in str(fault)
    put(pm.range, 5)
    server.simulator.set_input_power(1e-9)
    with pytest.raises(InstrumentFault, match="under range on R5"):
        power(pm)
    put(pm.range, 0)
    assert power(pm) == pytest.approx(1e-9, rel=1e-3)
    assert server.simulator.auto_range  # range reads the range in use, never "auto"


def test_echo_that_cannot_be_turned_off_still_reads_and_sets_right(meter):
    server, pm = meter(input_power=3.3e-7, echo=True)
    put(pm.wavelength, 900)
    assert server.simulator.wavelength == 900
    for _ in range(3):
        assert power(pm) == pytest.approx(3.3e-7, rel=1e-3)
    assert get(pm.wavelength) == 900


def test_stale_bytes_are_drained_before_a_query(meter, wait_until):
    server, pm = meter(input_power=1.5e-6)
    server.simulator.inject_stale(b"+.99E-3\n0800\n")
    # Wait until the stale line sits in the port's input buffer, as a late reply would.
    assert wait_until(lambda: pm.port._ser.in_waiting >= 13)
    assert power(pm) == pytest.approx(1.5e-6, rel=1e-3)


def test_short_scientific_replies_and_crlf(peer_meter):
    peer, pm = peer_meter(
        {
            "W?": b"0800\r\n",
            "U?": b"1\n",
            "R?": b"4\n",
            "F?": b"3\n",
            "A?": b"0\n",
            "D?": b"+.75E-9\n",
            "Q?": b"128\n",
        }
    )
    connect(pm)
    values = []
    for reply in (b"+.75E-9\n", b"5E-9\r\n", b"+.11E-9\n", b"-1.2E-12\n", b"3.000E-3\n"):
        peer.replies["D?"] = reply
        values.append(power(pm))
    assert values == [0.75e-9, 5e-9, 0.11e-9, -1.2e-12, 3e-3]
    for bad, error in (
        (b"SAT\n", InstrumentFault),
        (b"ERR 3\n", InstrumentFault),
        (b"12..3\n", ReplyError),
        (b"\n", ReplyError),
    ):
        peer.replies["D?"] = bad
        with pytest.raises(error):
            power(pm)
    assert peer.received[:2] == ["E0", "U1"]


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ({}, "nothing"),
        ({"W?": b"HELLO\n", "U?": b"1\n"}, "'HELLO'"),
        ({"W?": b"0800\n", "U?": b"dBm\n"}, "'dBm'"),
        ({"W?": b"0100\n", "U?": b"1\n"}, "'0100'"),
    ],
)
def test_identity_by_reply_shape(peer_meter, replies, expected):
    peer, pm = peer_meter(replies, timeout=0.2)
    with pytest.raises(IdentityMismatch) as err:
        connect(pm)
    msg = str(err.value)
    assert expected in msg and "1830-C" in msg and peer.path in msg


@pytest.mark.parametrize(
    ("fault", "error"), [("drop_next", InstrumentTimeout), ("garble_next", ReplyError)]
)
def test_lost_or_garbled_reading_fails_then_next_works(meter, fault, error):
    server, pm = meter(input_power=7.5e-7)
    setattr(server.simulator.faults, fault, 1)
    with pytest.raises(error, match="D") as err:
        power(pm)
    assert server.path in str(err.value) and "'pm'" in str(err.value)
    assert power(pm) == pytest.approx(7.5e-7, rel=1e-3)


def test_unplug_fails_clearly_and_replug_recovers(meter, serial_pool):
    server, pm = meter(input_power=2e-6)
    power(pm)
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)) as err:
        power(pm)
    assert server.path in str(err.value)
    server.replug()
    server.simulator.units = 2  # the meter was power-cycled into dBm meanwhile
    assert power(pm) == pytest.approx(2e-6, rel=1e-3)
    assert server.simulator.units == 1  # re-verified: U1 forced again
    assert pm.verified_generation == pm.port.generation


def test_lost_port_error_names_the_meter(meter):
    server, pm = meter()
    pm.port.close()
    with pytest.raises(PortUnavailable) as err:
        power(pm)
    assert err.value.instrument == "pm"


_METER_REPLIES = {
    "W?": b"0800\n",
    "U?": b"1\n",
    "R?": b"4\n",
    "F?": b"3\n",
    "A?": b"1\n",
    "Q?": b"128\n",
}


@pytest.mark.parametrize(
    "reply",
    [
        "+.5E999",  # the exponent overflows a float: it used to be recorded as inf W
        "-.5E999",
        "9.91E37",  # the SCPI "not a number" marker, not a power
        "+.2501E2",  # just above 25 W, the top of R8 with the attenuator in
        "-.2501E2",
    ],
)
def test_a_reading_the_meter_cannot_give_is_a_reply_error(peer_meter, reply):
    peer, pm = peer_meter({**_METER_REPLIES, "D?": reply.encode() + b"\n"})
    connect(pm)
    with pytest.raises(ReplyError) as err:
        power(pm)
    msg = str(err.value)
    assert "'pm'" in msg and peer.path in msg and "'D?'" in msg and repr(reply) in msg
    assert last(pm.power) is None  # nothing impossible was recorded


def test_the_top_of_the_meters_range_still_reads(peer_meter):
    peer, pm = peer_meter({**_METER_REPLIES, "D?": b"+.25E2\n"})
    connect(pm)
    for reply, watts in ((b"+.25E2\n", 25.0), (b"-.25E2\n", -25.0)):
        peer.replies["D?"] = reply
        assert power(pm) == watts


def test_saturation_from_the_simulator_is_refused(meter):
    server, pm = meter({"range": 8}, input_power=5e-3, saturation_w=2e-3)
    with pytest.raises(InstrumentFault, match="saturated on R8") as err:
        power(pm)
    assert "attenuator" in err.value.fix
    put(pm.attenuator, 1)
    put(pm.range, 0)
    assert power(pm) == pytest.approx(5e-3, rel=1e-3)


@pytest.mark.parametrize(
    ("status", "error"),
    [(b"32\n", InstrumentFault), (b"04\n", InstrumentFault), (b"OVER\n", ReplyError)],
)
def test_busy_padded_or_garbled_status(peer_meter, status, error):
    peer, pm = peer_meter({**_METER_REPLIES, "D?": b"+.75E-9\n", "Q?": status})
    connect(pm)
    with pytest.raises(error) as err:
        power(pm)
    assert repr(status.decode().strip()) in str(err.value)


def test_a_reading_equals_the_simulators_own_truth(meter):
    server, pm = meter(input_power=3.7e-7, power_range=4, wavelength=633)
    sim = server.simulator
    watts = power(pm)
    with sim.lock:
        truth = float(sim.reading())  # what the meter displays, formatted and parsed back
        settings = (sim.wavelength, sim.power_range, sim.filter, int(sim.attenuator))
    assert watts == truth
    config = on_loop(pm.read_configuration())
    assert (
        tuple(config[f"pm_{k}"]["value"] for k in ("wavelength", "range", "filter", "attenuator"))
        == settings
    )


def test_two_meters_count_on_one_port_without_interleaving(meter, serial_pool, RE, docs):  # noqa: N803
    """Two devices on one port (as the native meter and its legacy twin are in shadow): the
    lease keeps each transaction whole, and both record the same light."""
    server, pm = meter(input_power=4.2e-6, power_range=5)
    other = connect(Newport1830C(pm.port, name="pm_b", timeout=0.3))
    try:
        RE(bp.count([pm, other], 5))
    finally:
        other.close()
    docs.validate()
    events = docs.events()
    assert len(events) == 5
    for event in events:
        assert event["data"]["pm_power"] == event["data"]["pm_b_power"]
        assert event["data"]["pm_b_power"] == pytest.approx(4.2e-6, rel=1e-3)
    assert server.simulator.protocol_errors == []


def test_gathered_reads_on_one_port_do_not_interleave(meter):
    server, pm = meter(input_power=1e-6, power_range=4)
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


def test_auto_range_is_confirmed_and_range_reads_the_range_in_use(meter):
    server, pm = meter(input_power=3e-5, power_range=2)
    put(pm.range, 0)  # R0: confirmed by R? naming a range 1-8
    watts = get(pm.power)
    assert server.simulator.auto_range
    assert get(pm.range) == server.simulator.power_range == 6
    assert watts == pytest.approx(3e-5, rel=1e-3)


def test_a_closed_meter_sends_nothing(meter):
    server, pm = meter()
    pm.close()
    before = list(server.simulator.received_lines)
    with pytest.raises(Exception, match="closed"):  # noqa: B017
        power(pm)
    assert server.simulator.received_lines == before


def test_a_synchronous_call_on_the_loop_itself_is_refused(meter):
    """Waiting on the device's own loop could never end: refused with the way out."""
    server, pm = meter()

    async def nested():
        return call_sync(pm.read(), device=pm)

    with pytest.raises(Exception, match="await it"):  # noqa: B017
        on_loop(nested())


# --- pinned to tests/transcripts/newport1830c.yaml, byte for byte (ReplayPort) ----------------


def replay(*sections: str) -> ReplayPort:
    pairs = [pair for section in sections for pair in sim_transcript(section)[1]]
    return ReplayPort(pairs, url="replay://newport1830c")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


def test_connect_sends_the_transcripts_connect_section_in_order_in_one_lease():
    port = replay("connect")
    run(Newport1830C(port, name="pm").connect())
    port.assert_done()  # every pair used, in order, nothing else sent
    assert len(port.transactions) == 1


def test_transcript_a_valid_point_is_clear_read_status_in_one_lease():
    port = replay("connect", "point_valid")

    async def body():
        pm = Newport1830C(port, name="pm")
        await pm.connect()
        return await pm.read()

    assert run(body())["pm_power"]["value"] == 0.75e-9
    port.assert_done()
    assert port.transactions[-1] == b"C\nD?\nQ?\n"


@pytest.mark.parametrize(
    ("section", "code", "words"),
    [
        ("point_saturated", "SAT", "saturated"),
        ("point_over_range", "OVER", "over range"),
    ],
)
def test_transcript_saturated_or_over_range_is_never_a_reading(section, code, words):
    port = replay("connect", section)
    pm = Newport1830C(port, name="pm")

    async def body():
        await pm.connect()
        await pm.read()

    with pytest.raises(InstrumentFault) as err:
        run(body())
    assert err.value.code == code and words in str(err.value) and "'pm'" in str(err.value)
    assert last(pm.power) is None  # the clipped number was not recorded
    port.assert_done()


def test_wavelength_goes_out_in_four_digits_and_is_read_back_in_the_same_lease():
    port = replay("connect")
    port.extend(sim_transcript("wavelength")[1][:2])  # W0633 (silent), W? -> 0633
    pm = Newport1830C(port, name="pm")

    async def body():
        await pm.connect()
        await pm.wavelength.set(633)

    run(body())
    port.assert_done()
    assert port.transactions[-1] == b"W0633\nW?\n"
    assert last(pm.wavelength) == 633


# --- refresh_configuration: the settings as the meter reports them now ------------------------


def _config(pm: Newport1830C) -> dict[str, int]:
    """The settings as last reported, without asking again."""
    return {
        f"pm_{k}": last(getattr(pm, k)) for k in ("wavelength", "range", "filter", "attenuator")
    }


def test_refresh_reads_settings_changed_on_the_front_panel(meter):
    server, pm = meter(wavelength=800, power_range=3)
    sim = server.simulator
    with sim.lock:  # the front panel, not the driver
        sim.wavelength, sim.power_range, sim.filter, sim.attenuator = 1064, 5, 1, True
    before = list(sim.received_lines)
    on_loop(pm.refresh_configuration())
    assert _config(pm) == {
        "pm_wavelength": 1064,
        "pm_range": 5,
        "pm_filter": 1,
        "pm_attenuator": 1,
    }
    assert sim.received_lines[len(before) :] == ["W?", "R?", "F?", "A?"]


def test_transcript_refresh_only_asks():
    _, pairs = sim_transcript("refresh")
    port = replay("connect")
    port.extend(pairs)
    pm = Newport1830C(port, name="pm")

    async def body():
        await pm.connect()
        await pm.refresh_configuration()

    run(body())
    port.assert_done()
    assert len(port.transactions) == 2  # connect, then one lease of queries
    assert _config(pm) == {
        "pm_wavelength": 1064,
        "pm_range": 5,
        "pm_filter": 3,
        "pm_attenuator": 1,
    }


@pytest.mark.parametrize(
    ("query", "reply", "error"),
    [("F?", b"3x\n", ReplyError), ("A?", None, InstrumentTimeout)],
)
def test_refresh_with_a_bad_reply_names_the_meter_and_keeps_no_half_answer(
    peer_meter, query, reply, error
):
    replies, _ = {}, None
    for section in ("connect",):
        for line, answer in sim_transcript(section)[1]:
            replies[line.decode().strip()] = answer
    peer, pm = peer_meter(replies)
    connect(pm)
    peer.replies.update({"W?": b"1064\n", query: reply})
    with pytest.raises(error) as err:
        on_loop(pm.refresh_configuration())
    assert "'pm'" in str(err.value) and peer.path in str(err.value) and query in str(err.value)
    assert last(pm.wavelength) == 800  # no mix of fresh and stale settings
