"""Generic SCPI device over VISA: the TCP simulator via pyvisa-py and the pyvisa-sim YAML."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.protocols import Configurable, Movable, Readable, Triggerable
from bluesky.utils import FailedStatus

from daqbridge.devices.scpi import ScpiInstrument, ScpiSignalSpec, parse_scpi_error
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    ReplyError,
    ValueRejected,
)
from daqbridge.sim.scpi import (
    SCPI_SIM_PERSONALITY_RESOURCES,
    SCPI_SIM_RESOURCES,
    SCPI_SIM_YAML,
    serve_tcp,
)

SIGNALS = [
    {"name": "voltage", "query": "MEAS:VOLT:DC?", "units": "V", "kind": "hinted"},
    {
        "name": "source",
        "query": "SOUR:VOLT?",
        "command": "SOUR:VOLT {value}",
        "units": "V",
        "low": -20.0,
        "high": 20.0,
    },
    {
        "name": "output",
        "query": "OUTP?",
        "command": "OUTP {value}",
        "dtype": "int",
        "low": 0,
        "high": 1,
        "kind": "config",
    },
    {"name": "vrange", "query": "VOLT:RANG?", "command": "VOLT:RANG {value}", "kind": "config"},
]


@pytest.fixture
def dmm(visa_manager):
    """``dmm(name, signals=SIGNALS, **server_options)`` -> (server, device) on the TCP simulator."""
    made = []

    def make(name="dmm", signals=SIGNALS, expected_idn=None, **options):
        options.setdefault("noise", 0.0)
        cm = serve_tcp(**options)
        server = cm.__enter__()
        made.append((cm, None))
        session = visa_manager.session(server.resource, backend="@py")
        device = ScpiInstrument(
            session, signals=signals, name=name, expected_idn=expected_idn, timeout=0.5
        )
        made[-1] = (cm, device)
        return server, device

    yield make
    for cm, device in reversed(made):
        if device is not None:
            device.close()
        with contextlib.suppress(Exception):
            cm.__exit__(None, None, None)


def test_connect_identity_and_description(dmm):
    server, d = dmm(expected_idn="SCPI-DMM")
    assert d.connect() == "DAQBRIDGE-SIM,SCPI-DMM,SIM0001,1.0"
    for proto in (Readable, Triggerable, Configurable):
        assert isinstance(d, proto)
    assert isinstance(d.source, Movable)
    desc = d.describe()
    assert set(desc) == {"dmm_voltage", "dmm_source"}
    assert desc["dmm_voltage"]["units"] == "V" and desc["dmm_voltage"]["dtype"] == "number"
    assert "MEAS:VOLT:DC?" in desc["dmm_voltage"]["source"]
    assert server.resource in desc["dmm_voltage"]["source"]
    assert desc["dmm_source"]["limits"] == {"control": {"low": -20.0, "high": 20.0}}
    conf = d.read_configuration()
    assert conf["dmm_output"]["value"] == 0 and conf["dmm_vrange"]["value"] > 0
    assert conf["dmm_identity"]["value"].startswith("DAQBRIDGE-SIM")
    assert d.hints == {"fields": ["dmm_voltage"]}


def test_identity_mismatch(dmm):
    server, d = dmm(expected_idn="KEITHLEY")
    with pytest.raises(IdentityMismatch) as err:
        d.connect()
    msg = str(err.value)
    assert "KEITHLEY" in msg and "SCPI-DMM" in msg and server.resource in msg and "'dmm'" in msg


def test_set_reads_back_and_measures_the_loopback(dmm, RE, docs):
    server, d = dmm()
    d.connect()
    RE(bps.mv(d.output, 1))
    RE(bp.scan([d], d.source, -2.0, 2.0, 5))
    docs.validate()
    events = docs.events()
    assert len(events) == 5
    for ev in events:
        assert ev["data"]["dmm_voltage"] == pytest.approx(ev["data"]["dmm_source"], abs=1e-6)
    assert [e["data"]["dmm_source"] for e in events] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert docs.of("descriptor")[0]["configuration"]["dmm"]["data"]["dmm_output"] == 1
    assert "SOUR:VOLT -2" in server.model.received_lines


def test_instrument_refusal_fails_with_its_error_text(dmm):
    server, d = dmm()
    d.connect()
    d.source.set(1.5).wait(5)
    with pytest.raises(InstrumentFault) as err:
        d.source.set(15.0).wait(5)  # inside our limits (+-20), outside the source's (+-10)
    msg = str(err.value)
    assert '-222,"Data out of range"' in msg and "'dmm'" in msg and "SOUR:VOLT 15" in msg
    assert err.value.code == -222
    assert d.source.get() == 1.5  # the old value is still in effect
    assert d.errors() == []  # the check drained the queue


def test_limits_types_and_injected_terminators_never_reach_the_wire(dmm):
    spec = [*SIGNALS, {"name": "mode", "command": "CONF:VOLT {value}", "dtype": "str"}]
    server, d = dmm(signals=spec)
    d.connect()
    before = list(server.model.received_lines)
    for sig, bad in (
        ("source", 25.0),
        ("source", "1;*RST"),
        ("source", float("inf")),
        ("output", 0.5),
        ("output", 2),
        ("mode", "DC\nSOUR:VOLT 9"),
        ("mode", "DC;SOUR:VOLT 9"),
        ("mode", 3),
        ("voltage", 1.0),  # read-only
    ):
        with pytest.raises(ValueRejected) as err:
            getattr(d, sig).set(bad)
        assert "'dmm'" in str(err.value)
    assert list(server.model.received_lines) == before
    d.mode.set("10").wait(5)
    assert d.mode.get() == "10" and "CONF:VOLT 10" in server.model.received_lines


def test_errors_drains_the_queue(dmm):
    server, d = dmm()
    d.connect()
    server.model.queue_error(-113)
    server.model.queue_error(-222)
    assert d.errors() == [(-113, "Undefined header"), (-222, "Data out of range")]
    assert d.errors() == []
    assert parse_scpi_error('+0,"No error"') == (0, "No error")
    assert parse_scpi_error("-350,Queue overflow") == (-350, "Queue overflow")


def test_overload_is_a_fault_not_a_number(dmm):
    # READ? keeps the fixed range (MEAS? would autorange, as on real DMMs).
    server, d = dmm(signals=[{**SIGNALS[0], "query": "READ?"}, *SIGNALS[1:]])
    d.connect()
    d.output.set(1).wait(5)
    d.vrange.set(0.1).wait(5)
    d.source.set(5.0).wait(5)
    with pytest.raises(InstrumentFault, match="overload"):
        d.trigger().wait(5)
    d.vrange.set(10).wait(5)
    d.trigger().wait(5)
    assert d.voltage.get() == pytest.approx(5.0, abs=1e-6)


def test_timeout_and_garble_fail_then_next_point_works(dmm):
    server, d = dmm()
    d.connect()
    server.model.faults.stuck = True
    with pytest.raises(InstrumentTimeout) as err:
        d.trigger().wait(5)
    assert "'dmm'" in str(err.value) and "MEAS:VOLT:DC?" in str(err.value)
    server.model.faults.stuck = False
    d.trigger().wait(5)  # back in step: the session resynchronises after the timeout
    assert d.session.stale_discarded >= 0 and not d.session._out_of_step
    server.model.faults.garble_next = 1
    with pytest.raises(ReplyError, match="not a number"):
        d.trigger().wait(5)
    d.trigger().wait(5)
    assert d.voltage.get() == pytest.approx(0.0, abs=1e-6)


def test_two_tcp_instruments_are_read_concurrently(dmm, RE, docs, wait_until):
    server_a, a = dmm("dmm_a", serial="A1")
    server_b, b = dmm("dmm_b", serial="B2")
    a.connect()
    b.connect()
    a.output.set(1).wait(5)
    a.source.set(1.25).wait(5)
    # Slow replies: both sessions must be held at the same moment (one lease per instrument,
    # not one global VISA lock).
    server_a.model.faults.reply_delay = 0.3
    server_b.model.faults.reply_delay = 0.3
    st_a, st_b = a.trigger(), b.trigger()
    assert wait_until(lambda: a.session._lock.is_held and b.session._lock.is_held, timeout=5)
    st_a.wait(5)
    st_b.wait(5)
    server_a.model.faults.reply_delay = 0.0
    server_b.model.faults.reply_delay = 0.0
    RE(bp.count([a, b], 3))
    docs.validate()
    events = docs.events()
    assert len(events) == 3
    for ev in events:
        assert ev["data"]["dmm_a_voltage"] == pytest.approx(1.25, abs=1e-6)
        assert ev["data"]["dmm_b_voltage"] == pytest.approx(0.0, abs=1e-6)
    conf = docs.of("descriptor")[0]["configuration"]
    assert "A1" in conf["dmm_a"]["data"]["dmm_a_identity"]
    assert "B2" in conf["dmm_b"]["data"]["dmm_b_identity"]


def test_pyvisa_sim_two_instruments_in_one_plan(visa_manager, RE, docs):
    backend = f"{SCPI_SIM_YAML}@sim"
    devices = [
        ScpiInstrument(
            visa_manager.session(resource, backend=backend),
            signals=SIGNALS,
            name=f"sim{i}",
            expected_idn=f"SIM000{i + 1}",
            timeout=0.5,
        )
        for i, resource in enumerate(SCPI_SIM_RESOURCES)
    ]
    try:
        for d in devices:
            d.connect()
        devices[0].source.set(-3.5).wait(5)
        with pytest.raises(InstrumentFault, match='-100,"Command error"'):
            devices[1].source.set(12.0).wait(5)  # pyvisa-sim refuses out-of-spec values
        RE(bp.count(devices, 2))
        docs.validate()
        events = docs.events()
        assert len(events) == 2
        for ev in events:
            assert ev["data"]["sim0_voltage"] == 1.23456789
            assert ev["data"]["sim1_voltage"] == 1.23456789
            assert ev["data"]["sim0_source"] == -3.5
    finally:
        for d in devices:
            d.close()


def test_failed_point_in_a_plan(dmm, RE):
    server, d = dmm()
    d.connect()
    server.model.faults.drop_next = 1
    with pytest.raises(FailedStatus) as err:
        RE(bp.count([d], 1))
    assert isinstance(err.value.__cause__, InstrumentTimeout)
    RE(bp.count([d], 1))


def test_profile_signal_models_are_accepted(dmm):
    from daqbridge.config._models import ScpiSignal

    specs = [ScpiSignal(name="voltage", query="MEAS:VOLT:DC?", units="V", kind="hinted")]
    server, d = dmm(signals=specs)
    d.connect()
    d.trigger().wait(5)
    assert d.specs[0] == ScpiSignalSpec(
        name="voltage", query="MEAS:VOLT:DC?", units="V", kind="hinted"
    )


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"name": "v"}, "neither query nor command"),
        ({"name": "v", "query": "MEAS:VOLT:DC"}, "does not end in '?'"),
        ({"name": "v", "command": "SOUR:VOLT"}, "exactly one {value}"),
        ({"name": "v", "command": "SOUR:VOLT {value};*RST"}, "terminator or separator"),
        ({"name": "v", "query": "MEAS?", "kind": "fancy"}, "kind"),
        ({"name": "v", "query": "MEAS?", "dtype": "complex"}, "dtype"),
        ({"name": "v", "query": "MEAS?", "low": 5, "high": 1}, "not below"),
        ({"name": "trigger", "query": "MEAS?"}, "taken by the device"),
        ({"name": "1v", "query": "MEAS?"}, "identifier"),
        ({"name": "v", "query": "MEAS?", "colour": "red"}, "unknown signal key"),
    ],
)
def test_bad_signal_specs_are_config_errors(visa_manager, spec, text):
    session = visa_manager.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")
    with pytest.raises(ConfigError, match=text.replace("?", r"\?").replace("{", r"\{")):
        ScpiInstrument(session, signals=[spec], name="bad")


def test_duplicate_and_empty_signal_lists(visa_manager):
    session = visa_manager.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")
    with pytest.raises(ConfigError, match="twice"):
        ScpiInstrument(session, signals=[SIGNALS[0], SIGNALS[0]], name="bad")
    with pytest.raises(ConfigError, match="no signals"):
        ScpiInstrument(session, signals=[], name="bad")
    with pytest.raises(ConfigError, match="VisaSession"):
        ScpiInstrument("GPIB0::20::INSTR", signals=SIGNALS, name="bad")


def test_interactive_from_resource(visa_manager):
    d = ScpiInstrument.from_resource(
        SCPI_SIM_RESOURCES[1],
        backend=f"{SCPI_SIM_YAML}@sim",
        manager=visa_manager,
        signals=SIGNALS[:1],
        name="quick",
    )
    try:
        assert d.read_signals() == {"voltage": 1.23456789}
    finally:
        d.close()


def test_trigger_is_one_lease_per_point(dmm):
    server, d = dmm()
    d.connect()
    leases_before = d.session.stats()["transactions"]
    d.trigger().wait(5)
    assert d.session.stats()["transactions"] == leases_before + 1
    assert threading.active_count() < 200  # workers are per device, not per call


def test_a_late_reply_never_becomes_the_next_reading(dmm):
    """Replies come back in order: after a timeout the late answer sits in front of the next one.
    Read as the next query's reply it would be a plausible, silently wrong value (the source
    setting read as the measured voltage); the session resynchronises instead."""
    server, d = dmm()
    d.connect()
    d.output.set(1).wait(5)
    d.source.set(1.5).wait(5)
    server.model.faults.reply_delay = 0.8  # longer than the device's 0.5 s timeout
    with pytest.raises(InstrumentTimeout):
        d.trigger().wait(5)
    server.model.faults.reply_delay = 0.0
    d.source.set(3.0).wait(5)
    d.trigger().wait(5)
    assert d.voltage.get() == pytest.approx(3.0, abs=1e-6)
    assert d.source.get() == pytest.approx(3.0, abs=1e-6)
    assert d.session.stale_discarded >= 1


# --- the 34401A and Keithley 2000 personalities (issue 14) ---------------------------------------
# Pinned to tests/transcripts/scpi_34401a.yaml and scpi_keithley2000.yaml: the transcript peer
# answers exactly what the simulator answers to the same lines (tests/sim/test_scpi.py).

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts"

SIGNALS_34401A = [
    {"name": "voltage", "query": "READ?", "units": "V", "kind": "hinted"},
    {
        "name": "function",
        "query": "FUNC?",
        "command": 'FUNC "{value}"',
        "dtype": "str",
        "kind": "config",
    },
    {"name": "setup", "query": "CONF?", "dtype": "str", "kind": "config"},
    {
        "name": "vrange",
        "query": "VOLT:DC:RANG?",
        "command": "VOLT:DC:RANG {value}",
        "units": "V",
        "kind": "config",
    },
    {"name": "nplc", "query": "VOLT:DC:NPLC?", "command": "VOLT:DC:NPLC {value}", "kind": "config"},
    {
        "name": "display",
        "query": "DISP:TEXT?",
        "command": 'DISP:TEXT "{value}"',
        "dtype": "str",
        "kind": "config",
    },
]

SIGNALS_KEITHLEY2000 = [
    {"name": "voltage", "query": ":READ?", "units": "V", "kind": "hinted"},
    {
        "name": "function",
        "query": ":SENS:FUNC?",
        "command": ":SENS:FUNC '{value}'",
        "dtype": "str",
        "kind": "config",
    },
    {
        "name": "vrange",
        "query": ":SENS:VOLT:DC:RANG?",
        "command": ":SENS:VOLT:DC:RANG {value}",
        "units": "V",
        "kind": "config",
    },
    {
        "name": "nplc",
        "query": ":SENS:VOLT:DC:NPLC?",
        "command": ":SENS:VOLT:DC:NPLC {value}",
        "kind": "config",
    },
    {"name": "continuous", "query": ":INIT:CONT?", "dtype": "int", "kind": "config"},
    # Written for the generic meter (it has a source); a Keithley 2000 has none.
    {"name": "source", "command": "SOUR:VOLT {value}", "units": "V", "low": -10.0, "high": 10.0},
]


def personality_section(personality: str, name: str) -> tuple[dict, list[tuple[str, str | None]]]:
    """(simulator options, (sent, reply) lines without terminators) of one transcript section."""
    data = yaml.safe_load((TRANSCRIPTS / f"scpi_{personality}.yaml").read_text())[name]
    pairs = [
        (sent.strip(), None if reply is None else reply.rstrip("\n"))
        for sent, reply in data["exchanges"]
    ]
    return data["simulator"], pairs


class InOrder(dict):
    """Peer replies for lines answered differently over time: one list entry per time asked."""

    def get(self, key, default=None):
        replies = super().get(key)
        return replies.pop(0) if replies else default


def in_order(pairs: list[tuple[str, str | None]]) -> InOrder:
    answers = InOrder()
    for sent, reply in pairs:
        answers.setdefault(sent, []).append(None if reply is None else reply.encode() + b"\n")
    return answers


def test_34401a_driver_follows_the_shared_transcript(visa_manager, transcript):
    _, pairs = personality_section("34401a", "driver_connect")
    peer = transcript({})
    peer.replies = in_order(pairs)  # the peer copies a mapping into a plain dict
    session = visa_manager.session(f"ASRL{peer.path}::INSTR", backend="@py")
    d = ScpiInstrument(
        session, signals=SIGNALS_34401A, name="hp", expected_idn="34401A", timeout=1.0
    )
    try:
        d.connect()
        conf = d.read_configuration()
        assert conf["hp_function"]["value"] == "VOLT"  # the meter's name, quotes removed
        assert conf["hp_setup"]["value"] == "VOLT +1.000000E+01,+1.000000E-05"
        assert conf["hp_nplc"]["value"] == 10.0 and conf["hp_display"]["value"] == ""
        assert d.voltage.get() == 1.5
        d.function.set("VOLT:AC").wait(5)
        assert d.function.get() == "VOLT:AC"
        # A quote inside a string parameter is sent twice and read back once (IEEE 488.2).
        d.display.set('SAY "HI"').wait(5)
        assert d.display.get() == 'SAY "HI"'
        with pytest.raises(InstrumentFault) as err:
            d.nplc.set(3).wait(5)  # the 34401A integrates over 0.02, 0.2, 1, 10 or 100 PLC
        assert err.value.code == -222 and '"Data out of range"' in str(err.value)
        assert peer.received == [sent for sent, _ in pairs]  # every pair, in order
    finally:
        d.close()


def test_keithley2000_driver_follows_the_shared_transcript(visa_manager, transcript):
    _, pairs = personality_section("keithley2000", "driver_connect")
    peer = transcript({})
    peer.replies = in_order(pairs)  # the peer copies a mapping into a plain dict
    session = visa_manager.session(f"ASRL{peer.path}::INSTR", backend="@py")
    d = ScpiInstrument(
        session, signals=SIGNALS_KEITHLEY2000, name="k2000", expected_idn="MODEL 2000", timeout=1.0
    )
    try:
        assert d.connect().startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2000,")
        conf = d.read_configuration()
        assert conf["k2000_function"]["value"] == "VOLT:DC"
        assert conf["k2000_continuous"]["value"] == 1 and conf["k2000_nplc"]["value"] == 1.0
        d.function.set("RES").wait(5)
        d.trigger().wait(5)
        assert d.function.get() == "RES" and d.voltage.get() == 1000.0
        with pytest.raises(InstrumentFault) as err:
            d.source.set(1.0).wait(5)  # a generic-meter signal: the Keithley does not know it
        assert err.value.code == -113 and '"Undefined header"' in str(err.value)
        assert peer.received == [sent for sent, _ in pairs]
    finally:
        d.close()


PROFILE_SIGNALS = {
    "34401a": ("34401A", SIGNALS_34401A),
    "keithley2000": ("MODEL 2000", SIGNALS_KEITHLEY2000[:-1]),
}


@pytest.mark.parametrize("personality", sorted(PROFILE_SIGNALS))
def test_profile_signals_read_real_values_from_each_personality(dmm, RE, docs, personality):
    from daqbridge.config._models import ScpiSignal

    idn, signals = PROFILE_SIGNALS[personality]
    specs = [ScpiSignal(**s) for s in signals]
    server, d = dmm(
        name="meter",
        signals=specs,
        expected_idn=idn,
        personality=personality,
        input_voltage=2.5,
        input_resistance=4700.0,
    )
    d.connect()
    RE(bp.count([d], 2))
    server.model.input_voltage = -1.25  # the signal at the meter's input changes
    RE(bp.count([d], 1))
    docs.validate()
    assert [e["data"]["meter_voltage"] for e in docs.events()] == [2.5, 2.5, -1.25]
    conf = docs.of("descriptor")[0]["configuration"]["meter"]["data"]
    assert conf["meter_vrange"] == 10.0 and conf["meter_function"] in ("VOLT", "VOLT:DC")
    RE(bps.mv(d.function, "RES"))
    d.trigger().wait(5)
    assert d.voltage.get() == 4700.0 and d.function.get() == "RES"
    RE(bps.mv(d.vrange, 1.0, d.function, "VOLT:DC"))
    with pytest.raises(InstrumentFault, match="overload"):
        d.trigger().wait(5)  # -1.25 V on the fixed 1 V range
    assert d.errors() == []


def test_pyvisa_sim_personalities_read_through_the_driver(visa_manager):
    backend = f"{SCPI_SIM_YAML}@sim"
    hp = ScpiInstrument(
        visa_manager.session(SCPI_SIM_PERSONALITY_RESOURCES["34401a"], backend=backend),
        signals=SIGNALS_34401A[:3],
        name="hp",
        expected_idn="34401A",
        timeout=0.5,
    )
    k2000 = ScpiInstrument(
        visa_manager.session(SCPI_SIM_PERSONALITY_RESOURCES["keithley2000"], backend=backend),
        # pyvisa-sim stores the function as sent: double quotes, as the Keithley replies.
        signals=[
            SIGNALS_KEITHLEY2000[0],
            {**SIGNALS_KEITHLEY2000[1], "command": ':SENS:FUNC "{value}"'},
        ],
        name="k2000",
        expected_idn="MODEL 2000",
        timeout=0.5,
    )
    try:
        hp.connect()
        k2000.connect()
        assert hp.read_signals() == {
            "voltage": 1.23456789,
            "function": "VOLT",
            "setup": "VOLT +1.000000E+01,+1.000000E-05",
        }
        hp.function.set("VOLT:AC").wait(5)
        k2000.function.set("RES").wait(5)
        assert (hp.function.get(), k2000.function.get()) == ("VOLT:AC", "RES")
    finally:
        hp.close()
        k2000.close()
