"""Newport 1830-C power meter against the simulator on real ptys, and exact replies from a peer."""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
from bluesky.protocols import Configurable, Readable, Triggerable
from bluesky.utils import FailedStatus

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


@pytest.fixture
def meter(serial_pool):
    """``meter(device_options, **sim_options)`` -> (server, meter), connected."""
    opened = []

    def make(device_options=None, *, connect=True, **options):
        options.setdefault("speed", 50.0)
        options.setdefault("noise", 0.0)
        options.setdefault("response_time", 0.0)
        cm = serve_pty("newport1830c", **options)
        server = cm.__enter__()
        opened.append((cm, None))
        port = serial_pool.open(server.path, baudrate=9600)
        device = Newport1830C(port, name="pm", timeout=0.3, **(device_options or {}))
        opened[-1] = (cm, device)
        if connect:
            device.connect()
        return server, device

    yield make
    for cm, device in reversed(opened):
        if device is not None:
            device.close()
        cm.__exit__(None, None, None)


def test_connect_forces_echo_off_and_watts(meter):
    server, pm = meter(units=2, echo_on_power_up=True, input_power=2.5e-7, wavelength=633)
    sim = server.simulator
    assert sim.units == 1 and not sim.echo_enabled
    assert sim.received_lines[:2] == ["E0", "U1"]
    assert pm.wavelength.get() == 633 and pm.filter.get() == 3 and pm.attenuator.get() == 0
    pm.trigger().wait(5)
    assert pm.power.get() == pytest.approx(2.5e-7, rel=1e-3)
    for proto in (Readable, Triggerable, Configurable):
        assert isinstance(pm, proto)
    desc = pm.describe()["pm_power"]
    assert desc["units"] == "W" and desc["dtype"] == "number" and server.path in desc["source"]
    assert pm.hints == {"fields": ["pm_power"]}


def test_profile_settings_are_applied_and_read_back(meter):
    server, pm = meter({"wavelength_nm": 1064, "range": 5, "filter": "medium", "attenuator": True})
    sim = server.simulator
    assert (sim.wavelength, sim.power_range, sim.filter, sim.attenuator) == (1064, 5, 2, True)
    conf = pm.read_configuration()
    assert conf["pm_wavelength"]["value"] == 1064 and conf["pm_range"]["value"] == 5
    assert conf["pm_filter"]["value"] == 2 and conf["pm_attenuator"]["value"] == 1


def test_count_and_settings_in_plans(meter, RE, docs):
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
        getattr(pm, signal).set(value)
    assert "pm" in str(err.value)
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
        with pytest.raises(ConfigError, match="SharedSerialPort"):
            Newport1830C(server.path, name="pm")


def test_over_range_is_an_error_naming_the_range(meter, RE):
    server, pm = meter({"range": 3}, input_power=1e-6)  # R3 full scale 250 nW
    with pytest.raises(InstrumentFault) as err:
        pm.trigger().wait(5)
    msg = str(err.value)
    assert "over range on R3" in msg and "higher range or enable auto range" in msg
    assert err.value.code == "OVER"
    with pytest.raises(FailedStatus) as err:
        RE(bp.count([pm], 1))
    assert isinstance(err.value.__cause__, InstrumentFault)
    assert "over range on R3" in str(err.value.__cause__)
    pm.range.set(5).wait(5)
    server.simulator.set_input_power(1e-9)
    with pytest.raises(InstrumentFault, match="under range on R5"):
        pm.trigger().wait(5)
    pm.range.set(0).wait(5)
    pm.trigger().wait(5)
    assert pm.power.get() == pytest.approx(1e-9, rel=1e-3) and pm.range.get() == 0


def test_echo_that_cannot_be_turned_off_still_reads_right(meter):
    server, pm = meter(input_power=3.3e-7, echo=True)
    pm.wavelength.set(900).wait(5)
    for _ in range(3):
        pm.trigger().wait(5)
        assert pm.power.get() == pytest.approx(3.3e-7, rel=1e-3)
    assert pm.wavelength.get() == 900


def test_stale_bytes_are_drained_before_a_query(meter, wait_until):
    server, pm = meter(input_power=1.5e-6)
    server.simulator.inject_stale(b"+.99E-3\n0800\n")
    # Wait until the stale line sits in the port's input buffer, as a late reply would.
    assert wait_until(lambda: pm.port._ser.in_waiting >= 13)
    pm.trigger().wait(5)
    assert pm.power.get() == pytest.approx(1.5e-6, rel=1e-3)


def test_short_scientific_replies_and_crlf(serial_pool, transcript):
    peer = transcript(
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
    pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=0.3)
    try:
        pm.connect()
        values = []
        for reply in (b"+.75E-9\n", b"5E-9\r\n", b"+.11E-9\n", b"-1.2E-12\n", b"3.000E-3\n"):
            peer.replies["D?"] = reply
            pm.trigger().wait(5)
            values.append(pm.power.get())
        assert values == [0.75e-9, 5e-9, 0.11e-9, -1.2e-12, 3e-3]
        for bad, error in (
            (b"SAT\n", InstrumentFault),
            (b"ERR 3\n", InstrumentFault),
            (b"12..3\n", ReplyError),
            (b"\n", ReplyError),
        ):
            peer.replies["D?"] = bad
            with pytest.raises(error):
                pm.trigger().wait(5)
        assert peer.received[:2] == ["E0", "U1"]
    finally:
        pm.close()


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ({}, "nothing"),
        ({"W?": b"HELLO\n", "U?": b"1\n"}, "'HELLO'"),
        ({"W?": b"0800\n", "U?": b"dBm\n"}, "'dBm'"),
        ({"W?": b"0100\n", "U?": b"1\n"}, "'0100'"),
    ],
)
def test_identity_by_reply_shape(serial_pool, transcript, replies, expected):
    peer = transcript(replies)
    pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=0.2)
    try:
        with pytest.raises(IdentityMismatch) as err:
            pm.connect()
        msg = str(err.value)
        assert expected in msg and "1830-C" in msg and peer.path in msg
    finally:
        pm.close()


@pytest.mark.parametrize(
    ("fault", "error"), [("drop_next", InstrumentTimeout), ("garble_next", ReplyError)]
)
def test_lost_or_garbled_reading_fails_then_next_works(meter, fault, error):
    server, pm = meter(input_power=7.5e-7)
    setattr(server.simulator.faults, fault, 1)
    with pytest.raises(error, match="D") as err:
        pm.trigger().wait(5)
    assert server.path in str(err.value) and "'pm'" in str(err.value)
    pm.trigger().wait(5)
    assert pm.power.get() == pytest.approx(7.5e-7, rel=1e-3)


def test_unplug_fails_clearly_and_replug_recovers(meter):
    server, pm = meter(input_power=2e-6)
    pm.trigger().wait(5)
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)) as err:
        pm.trigger().wait(5)
    assert server.path in str(err.value)
    server.replug()
    server.simulator.units = 2  # the meter was power-cycled into dBm meanwhile
    pm.trigger().wait(5)
    assert pm.power.get() == pytest.approx(2e-6, rel=1e-3)
    assert server.simulator.units == 1  # re-verified: U1 forced again


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
def test_a_reading_the_meter_cannot_give_is_a_reply_error(serial_pool, transcript, reply):
    peer = transcript({**_METER_REPLIES, "D?": reply.encode() + b"\n"})
    pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=0.3)
    try:
        pm.connect()
        with pytest.raises(ReplyError) as err:
            pm.trigger().wait(5)
        msg = str(err.value)
        assert "'pm'" in msg and peer.path in msg and "'D?'" in msg and repr(reply) in msg
        assert math.isnan(pm.power.get())  # nothing impossible was recorded
    finally:
        pm.close()


def test_the_top_of_the_meters_range_still_reads(serial_pool, transcript):
    peer = transcript({**_METER_REPLIES, "D?": b"+.25E2\n"})
    pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=0.3)
    try:
        pm.connect()
        for reply, watts in ((b"+.25E2\n", 25.0), (b"-.25E2\n", -25.0)):
            peer.replies["D?"] = reply
            pm.trigger().wait(5)
            assert pm.power.get() == watts
    finally:
        pm.close()


# --- pinned to tests/transcripts/newport1830c.yaml, the pairs the simulator tests replay -------


def _replies(*sections: str) -> tuple[dict[str, bytes | None], list[str]]:
    """The peer's replies and the lines the driver must send, from transcript sections."""
    replies: dict[str, bytes | None] = {}
    sent: list[str] = []
    for section in sections:
        for line, reply in sim_transcript(section)[1]:
            text = line.decode().strip()
            assert replies.get(text, reply) == reply, f"{text!r} answered two ways in {sections}"
            replies[text] = reply
            sent.append(text)
    return replies, sent


def _connected(serial_pool, transcript, *sections: str):
    replies, sent = _replies("connect", *sections)
    peer = transcript(replies)
    pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=0.3)
    pm.connect()
    return peer, pm, sent


def test_transcript_a_valid_point_is_clear_read_status(serial_pool, transcript):
    peer, pm, sent = _connected(serial_pool, transcript, "point_valid")
    try:
        pm.trigger().wait(5)
        assert pm.power.get() == 0.75e-9
        assert peer.received == sent
    finally:
        pm.close()


@pytest.mark.parametrize(
    ("section", "code", "words"),
    [
        ("point_saturated", "SAT", "saturated"),
        ("point_over_range", "OVER", "over range"),
    ],
)
def test_transcript_saturated_or_over_range_is_never_a_reading(
    serial_pool, transcript, section, code, words
):
    peer, pm, sent = _connected(serial_pool, transcript, section)
    try:
        with pytest.raises(InstrumentFault) as err:
            pm.trigger().wait(5)
        assert err.value.code == code and words in str(err.value) and "'pm'" in str(err.value)
        assert math.isnan(pm.power.get())  # the clipped number was not recorded
        assert peer.received == sent
    finally:
        pm.close()


def test_saturation_from_the_simulator_is_refused(meter):
    server, pm = meter({"range": 8}, input_power=5e-3, saturation_w=2e-3)
    with pytest.raises(InstrumentFault, match="saturated on R8") as err:
        pm.trigger().wait(5)
    assert "attenuator" in err.value.fix
    pm.attenuator.set(1).wait(5)
    pm.range.set(0).wait(5)
    pm.trigger().wait(5)
    assert pm.power.get() == pytest.approx(5e-3, rel=1e-3)


@pytest.mark.parametrize(
    ("status", "error"),
    [(b"32\n", InstrumentFault), (b"04\n", InstrumentFault), (b"OVER\n", ReplyError)],
)
def test_busy_padded_or_garbled_status(serial_pool, transcript, status, error):
    peer = transcript({**_METER_REPLIES, "D?": b"+.75E-9\n", "Q?": status})
    pm = Newport1830C(serial_pool.open(peer.path, baudrate=9600), name="pm", timeout=0.3)
    try:
        pm.connect()
        with pytest.raises(error) as err:
            pm.trigger().wait(5)
        assert repr(status.decode().strip()) in str(err.value)
    finally:
        pm.close()


def test_wavelength_goes_out_in_the_manuals_four_digits(serial_pool, transcript):
    setting = sim_transcript("wavelength")[1][:2]  # W0633 (silent), W? -> 0633
    peer, pm, sent = _connected(serial_pool, transcript)
    try:
        peer.replies["W?"] = setting[1][1]
        pm.wavelength.set(633).wait(5)
        assert pm.wavelength.get() == 633
        assert peer.received[len(sent) :] == [line.decode().strip() for line, _ in setting]
    finally:
        pm.close()


# --- refresh_configuration: the settings as the meter reports them now ------------------------


def _config(pm: Newport1830C) -> dict[str, int]:
    return {key: reading["value"] for key, reading in pm.read_configuration().items()}


def test_refresh_reads_settings_changed_on_the_front_panel(meter):
    server, pm = meter(wavelength=800, power_range=3)
    sim = server.simulator
    with sim.lock:  # the front panel, not the driver
        sim.wavelength, sim.power_range, sim.filter, sim.attenuator = 1064, 5, 1, True
    before = list(sim.received_lines)
    pm.refresh_configuration()
    assert _config(pm) == {
        "pm_wavelength": 1064,
        "pm_range": 5,
        "pm_filter": 1,
        "pm_attenuator": 1,
    }
    assert sim.received_lines[len(before) :] == ["W?", "R?", "F?", "A?"]


def test_transcript_refresh_only_asks(serial_pool, transcript):
    peer, pm, sent = _connected(serial_pool, transcript)
    try:
        _, pairs = sim_transcript("refresh")
        peer.replies.update({line.decode().strip(): reply for line, reply in pairs})
        pm.refresh_configuration()
        assert peer.received[len(sent) :] == [line.decode().strip() for line, _ in pairs]
        assert _config(pm) == {
            "pm_wavelength": 1064,
            "pm_range": 5,
            "pm_filter": 3,
            "pm_attenuator": 1,
        }
    finally:
        pm.close()


@pytest.mark.parametrize(
    ("query", "reply", "error"),
    [("F?", b"3x\n", ReplyError), ("A?", None, InstrumentTimeout)],
)
def test_refresh_with_a_bad_reply_names_the_meter_and_keeps_no_half_answer(
    serial_pool, transcript, query, reply, error
):
    peer, pm, _ = _connected(serial_pool, transcript)
    try:
        peer.replies.update({"W?": b"1064\n", query: reply})
        with pytest.raises(error) as err:
            pm.refresh_configuration()
        assert "'pm'" in str(err.value) and peer.path in str(err.value) and query in str(err.value)
        assert pm.wavelength.get() == 800  # no mix of fresh and stale settings
    finally:
        pm.close()
