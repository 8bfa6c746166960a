"""Generic SCPI instrument over VISA (ophyd-async): pinned to the shared transcripts byte for byte
(ReplayPort), checked against the simulators through real VISA (the TCP simulator over
pyvisa-py, its model's inputs being the truth; pyvisa-sim's fixed reading), in a real RunEngine,
with the descriptors runs have always recorded.

Devices on a VISA session live on the RunEngine's loop (the ``RE`` fixture starts it); the tests
reach them from their own thread with :func:`daqbridge.devices.core.call_sync`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.protocols import Configurable, Movable, Readable, Triggerable
from ophyd_async.core import SignalR, SignalRW

from daqbridge.devices.core import ReplayPort, call_sync
from daqbridge.devices.scpi import (
    TERMINATIONS,
    ScpiInstrument,
    ScpiSettings,
    ScpiSignalSettings,
    ScpiSignalSpec,
    build,
    parse_scpi_error,
)
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

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts"

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


COMMAND_ONLY = {
    "name": "offset",
    "command": "SOUR:VOLT {value}",
    "units": "V",
    "low": -5,
    "high": 5,
}


def transcript(personality: str, section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) byte pairs of one section of a transcript shared with the simulator tests."""
    data = yaml.safe_load((TRANSCRIPTS / f"scpi_{personality}.yaml").read_text())[section]
    return [(s.encode(), None if r is None else r.encode()) for s, r in data["exchanges"]]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """One body on a fresh loop, bounded: a hang fails instead of stalling the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


def on_loop(work: Any, timeout: float = 10.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    return call_sync(work, timeout=timeout)


def put(signal: Any, value: Any) -> None:
    """``signal.set(value)``, its status made and awaited on the loop."""
    on_loop(lambda: signal.set(value))


def last(signal: Any) -> Any:
    """What the signal last heard from the instrument, without asking again."""
    reading = signal._connector.backend.last_reading
    return None if reading is None else reading["value"]


def value(device: ScpiInstrument, signal: str) -> Any:
    """One reading of the device (every hinted/normal signal, one lease): ``signal``'s value."""
    return on_loop(device.read())[f"{device.name}_{signal}"]["value"]


@pytest.fixture
def meter(visa_manager, RE):  # noqa: N803 - the RunEngine's loop must be running
    """``meter(name, signals=SIGNALS, **server_options)`` -> (server, device) on the TCP
    simulator through pyvisa-py, connected on the RunEngine's loop."""
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
        on_loop(device.connect(timeout=5))
        return server, device

    yield make
    for cm, device in reversed(made):
        if device is not None:
            device.close()
        cm.__exit__(None, None, None)


# --- pinned to tests/transcripts/scpi_*.yaml, byte for byte (ReplayPort) --------------------------


def test_34401a_follows_the_shared_transcript():
    port = ReplayPort(transcript("34401a", "driver_connect"), url="replay://34401a")

    async def body() -> ScpiInstrument:
        hp = ScpiInstrument(port, signals=SIGNALS_34401A, name="hp", expected_idn="34401A")
        await hp.connect()
        assert len(port.transactions) == 1  # identity, old errors and every query: one lease
        assert last(hp.identity) == "HEWLETT-PACKARD,34401A,0,11-5-2"
        assert last(hp.voltage) == 1.5
        assert last(hp.function) == "VOLT"  # the meter's name, quotes removed
        assert last(hp.setup) == "VOLT +1.000000E+01,+1.000000E-05"
        assert (last(hp.vrange), last(hp.nplc), last(hp.display)) == (10.0, 10.0, "")
        await hp.function.set("VOLT:AC")
        assert last(hp.function) == "VOLT:AC"
        # A quote inside a string parameter is sent twice and read back once (IEEE 488.2).
        await hp.display.set('SAY "HI"')
        assert last(hp.display) == 'SAY "HI"'
        with pytest.raises(InstrumentFault) as err:
            await hp.nplc.set(3)  # the 34401A integrates over 0.02, 0.2, 1, 10 or 100 PLC
        return err.value

    fault = run(body())
    port.assert_done()  # every pair used, in order, nothing else sent
    msg = str(fault)
    assert fault.code == -222 and '-222,"Data out of range"' in msg
    assert "'hp'" in msg and "replay://34401a" in msg and "VOLT:DC:NPLC 3" in msg
    # each set is one lease: command, SYST:ERR? until 0, read-back
    assert port.transactions[1:] == [
        b'FUNC "VOLT:AC"\nSYST:ERR?\nFUNC?\n',
        b'DISP:TEXT "SAY ""HI"""\nSYST:ERR?\nDISP:TEXT?\n',
        b"VOLT:DC:NPLC 3\nSYST:ERR?\nSYST:ERR?\n",
    ]


def test_keithley2000_follows_the_shared_transcript():
    port = ReplayPort(transcript("keithley2000", "driver_connect"), url="replay://k2000")

    async def body() -> tuple[dict, InstrumentFault]:
        k = ScpiInstrument(
            port, signals=SIGNALS_KEITHLEY2000, name="k2000", expected_idn="MODEL 2000"
        )
        await k.connect()
        assert last(k.identity).startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2000,")
        assert (last(k.function), last(k.continuous), last(k.nplc)) == ("VOLT:DC", 1, 1.0)
        await k.function.set("RES")
        reading = await k.read()  # one lease: :READ? (source has no query: nothing asked)
        with pytest.raises(InstrumentFault) as err:
            await k.source.set(1.0)  # a generic-meter signal: the Keithley does not know it
        return reading, err.value

    reading, fault = run(body())
    port.assert_done()
    assert reading["k2000_voltage"]["value"] == 1000.0  # 1 kOhm on the RES function
    assert fault.code == -113 and '"Undefined header"' in str(fault) and "'k2000'" in str(fault)


def test_identity_mismatch_names_both_and_sends_nothing_else():
    port = ReplayPort(transcript("34401a", "driver_connect")[:1], url="replay://34401a")
    d = ScpiInstrument(port, signals=SIGNALS_34401A, name="dmm", expected_idn="KEITHLEY")
    with pytest.raises(IdentityMismatch) as err:
        run(d.connect())
    msg = str(err.value)
    assert "KEITHLEY" in msg and "34401A" in msg and "'dmm'" in msg and "replay://34401a" in msg
    port.assert_done()


def test_a_garbled_reply_is_an_error_and_the_next_point_reads():
    pairs = transcript("34401a", "driver_connect")[:8]  # connect
    pairs += [(b"READ?\n", b"+1.5#000000E+00\n"), (b"READ?\n", b"+1.50000000E+00\n")]
    port = ReplayPort(pairs, url="replay://34401a")

    async def body() -> tuple[ReplyError, dict]:
        hp = ScpiInstrument(port, signals=SIGNALS_34401A, name="hp")
        await hp.connect()
        with pytest.raises(ReplyError) as err:
            await hp.read()
        return err.value, await hp.read()

    error, reading = run(body())
    port.assert_done()
    msg = str(error)
    assert "not a number" in msg and "READ?" in msg and "+1.5#000000E+00" in msg
    assert "'hp'" in msg and "replay://34401a" in msg
    assert reading["hp_voltage"]["value"] == 1.5


@pytest.mark.parametrize(
    ("signal", "bad"),
    [
        ("vrange", "1;*RST"),
        ("vrange", float("inf")),
        ("function", 'VOLT"\nSYST:BEEP'),
        ("function", "VOLT;*RST"),
        ("function", 3),
        ("setup", "VOLT"),  # query only
    ],
)
def test_bad_values_are_refused_before_the_wire(signal, bad):
    port = ReplayPort(transcript("34401a", "driver_connect")[:8], url="replay://34401a")

    async def body() -> None:
        hp = ScpiInstrument(port, signals=SIGNALS_34401A, name="hp")
        await hp.connect()
        target = getattr(hp, signal)
        if isinstance(target, SignalRW):
            await target.set(bad)
        else:
            await target._connector.backend.put(bad)

    with pytest.raises(ValueRejected) as err:
        run(body())
    assert "'hp'" in str(err.value) and "replay://34401a" in str(err.value)
    port.assert_done()  # nothing sent after connect


def test_limits_of_a_spec_are_checked_before_the_wire():
    port = ReplayPort(transcript("keithley2000", "driver_connect")[:7], url="replay://k2000")

    async def body() -> None:
        k = ScpiInstrument(port, signals=SIGNALS_KEITHLEY2000, name="k2000")
        await k.connect()
        await k.source.set(10.5)  # the spec's high is 10

    with pytest.raises(ValueRejected, match=r"outside the limits \[-10.0, 10.0\]"):
        run(body())
    port.assert_done()


# --- descriptors: what runs have always recorded, key for key -------------------------------------

RESOURCE = "TCPIP0::192.168.1.100::5025::SOCKET"


def key(query: str, dtype: str, **extra: Any) -> dict[str, Any]:
    """One data key as recorded: source ``SCPI <session label> <query or command>``."""
    label = f"{RESOURCE} ({SCPI_SIM_YAML}@sim)"
    return {"source": f"SCPI {label} {query}", "dtype": dtype, "shape": [], **extra}


def limits(low: float, high: float) -> dict[str, Any]:
    return {"limits": {"control": {"low": low, "high": high}}}


IDENTITY = {"meter_identity": key("*IDN?", "string")}
DESCRIPTORS = {
    "generic": (
        {
            "meter_voltage": key("MEAS:VOLT:DC?", "number", units="V"),
            "meter_source": key("SOUR:VOLT?", "number", units="V", **limits(-20.0, 20.0)),
            "meter_offset": key("SOUR:VOLT {value}", "number", units="V", **limits(-5, 5)),
        },
        {
            **IDENTITY,
            "meter_output": key("OUTP?", "integer", **limits(0, 1)),
            "meter_vrange": key("VOLT:RANG?", "number"),
        },
    ),
    "34401a": (
        {"meter_voltage": key("READ?", "number", units="V")},
        {
            **IDENTITY,
            "meter_function": key("FUNC?", "string"),
            "meter_setup": key("CONF?", "string"),
            "meter_vrange": key("VOLT:DC:RANG?", "number", units="V"),
            "meter_nplc": key("VOLT:DC:NPLC?", "number"),
            "meter_display": key("DISP:TEXT?", "string"),
        },
    ),
    "keithley2000": (
        {
            "meter_voltage": key(":READ?", "number", units="V"),
            "meter_source": key("SOUR:VOLT {value}", "number", units="V", **limits(-10.0, 10.0)),
        },
        {
            **IDENTITY,
            "meter_function": key(":SENS:FUNC?", "string"),
            "meter_vrange": key(":SENS:VOLT:DC:RANG?", "number", units="V"),
            "meter_nplc": key(":SENS:VOLT:DC:NPLC?", "number"),
            "meter_continuous": key(":INIT:CONT?", "integer"),
        },
    ),
}


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ([*SIGNALS, COMMAND_ONLY], DESCRIPTORS["generic"]),
        (SIGNALS_34401A, DESCRIPTORS["34401a"]),
        (SIGNALS_KEITHLEY2000, DESCRIPTORS["keithley2000"]),
    ],
    ids=["generic", "34401a", "keithley2000"],
)
def test_descriptors_are_the_recorded_ones(visa_manager, signals, expected):
    """The descriptors runs recorded with the ophyd v1 driver, stated: a catalog cannot tell
    which driver recorded a run (ADR 0007). Order matters: object_keys are lists."""
    session = visa_manager.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")
    assert session.label == f"{RESOURCE} ({SCPI_SIM_YAML}@sim)"
    native = ScpiInstrument(session, signals=signals, name="meter")
    described = run(native.describe())
    configuration = run(native.describe_configuration())
    assert described == expected[0] and list(described) == list(expected[0])
    assert configuration == expected[1] and list(configuration) == list(expected[1])
    assert native.hints == {"fields": ["meter_voltage"]}


def test_kinds_types_and_protocols():
    port = ReplayPort([], url="replay://none")
    d = ScpiInstrument(port, signals=[*SIGNALS, COMMAND_ONLY], name="dmm")
    for proto in (Readable, Configurable):
        assert isinstance(d, proto)
    assert not isinstance(d, Triggerable)  # read() asks the instrument: nothing to start
    # writability is a type: a query-only spec is a SignalR, a spec with a command a SignalRW
    assert isinstance(d.voltage, SignalR) and not isinstance(d.voltage, SignalRW)
    for settable in (d.source, d.output, d.vrange, d.offset):
        assert isinstance(settable, SignalRW) and isinstance(settable, Movable)
    assert d.hints == {"fields": ["dmm_voltage"]}
    assert list(run(d.describe())) == ["dmm_voltage", "dmm_source", "dmm_offset"]
    assert list(run(d.describe_configuration())) == ["dmm_identity", "dmm_output", "dmm_vrange"]


# --- through real VISA: the simulators are the truth ----------------------------------------------


def test_pyvisa_sim_reading_is_the_simulators(visa_manager, RE):  # noqa: N803
    session = visa_manager.session(SCPI_SIM_RESOURCES[1], backend=f"{SCPI_SIM_YAML}@sim")
    d = ScpiInstrument(session, signals=SIGNALS, name="sim1", expected_idn="SIM0002")
    try:
        on_loop(d.connect(timeout=5))
        assert value(d, "voltage") == 1.23456789  # the fixed reading of scpi_instrument.yaml
        put(d.source, -3.5)
        assert last(d.source) == -3.5
        assert on_loop(d.read_signals(["voltage", "source"])) == {
            "voltage": 1.23456789,
            "source": -3.5,
        }
        with pytest.raises(InstrumentFault, match='-100,"Command error"'):
            put(d.source, 12.0)  # pyvisa-sim refuses out-of-spec values
        assert value(d, "source") == -3.5
    finally:
        d.close()


def test_a_blocking_lease_on_the_session_holds_the_device_off(visa_manager, RE, wait_until):  # noqa: N803
    session = visa_manager.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")
    d = ScpiInstrument(session, signals=SIGNALS, name="sim0")
    try:
        on_loop(d.connect(timeout=5))
        with session.lease("another client"):  # a blocking lease (a script, `daqbridge hardware`)
            reading = asyncio.run_coroutine_threadsafe(d.read(), d.connected_loop)
            # the coroutine waits for the lease on the loop, parking no thread
            assert wait_until(lambda: session._lock.snapshot()["waiters"] == ["sim0"])
            assert not reading.done()
        assert reading.result(5)["sim0_voltage"]["value"] == 1.23456789
    finally:
        d.close()


def test_reading_follows_the_simulators_input(meter):
    server, hp = meter(
        "hp", SIGNALS_34401A[:3], expected_idn="34401A", personality="34401a", input_voltage=2.5
    )
    assert value(hp, "voltage") == server.model.input_voltage == 2.5
    server.model.input_voltage = -1.25  # the signal at the meter's input changes
    assert value(hp, "voltage") == -1.25


def test_set_reads_back_and_a_refusal_carries_the_instruments_text(meter):
    server, d = meter()
    put(d.output, 1)
    put(d.source, 1.5)
    assert "SOUR:VOLT 1.5" in server.model.received_lines
    assert last(d.source) == 1.5 and on_loop(d.source.get_value()) == 1.5
    assert value(d, "voltage") == pytest.approx(1.5, abs=1e-6)  # the loopback measures it
    with pytest.raises(InstrumentFault) as err:
        put(d.source, 15.0)  # inside our limits (+-20), outside the source's (+-10)
    msg = str(err.value)
    assert '-222,"Data out of range"' in msg and "SOUR:VOLT 15" in msg
    assert "'dmm'" in msg and server.resource in msg
    assert err.value.code == -222
    assert on_loop(d.source.get_value()) == 1.5  # the old value is still in effect
    assert on_loop(d.errors()) == []  # the set drained the queue


def test_timeout_and_garble_through_visa_then_the_next_point_reads(meter):
    server, d = meter()
    server.model.faults.stuck = True
    with pytest.raises(InstrumentTimeout) as err:
        on_loop(d.read())
    assert "'dmm'" in str(err.value) and "MEAS:VOLT:DC?" in str(err.value)
    server.model.faults.stuck = False
    assert value(d, "voltage") == pytest.approx(0.0, abs=1e-6)  # back in step
    server.model.faults.garble_next = 1
    with pytest.raises(ReplyError, match="not a number"):
        on_loop(d.read())
    assert value(d, "voltage") == pytest.approx(0.0, abs=1e-6)


def test_a_reply_that_is_not_ascii_is_an_error_and_the_line_stays_in_step(
    visa_manager,
    transcript,
    RE,  # noqa: N803
):
    # pyvisa decodes replies as ASCII: line noise above 0x7F must be a ReplyError naming the
    # instrument, not a UnicodeDecodeError, and the next reply must be read as the next one.
    lines = [
        ("*IDN?", "HEWLETT-PACKARD,34401A,0,11-5-2"),
        ("SYST:ERR?", '+0,"No error"'),
        ("READ?", "+1.50000000E+00"),
    ]
    peer = transcript({})
    peer.replies = in_order(lines)
    peer.replies["READ?"] += [b"+1.5\xb10000000E+00\n", b"+2.50000000E+00\n"]
    session = visa_manager.session(f"ASRL{peer.path}::INSTR", backend="@py")
    hp = ScpiInstrument(session, signals=SIGNALS_34401A[:1], name="hp", timeout=1.0)
    try:
        on_loop(hp.connect(timeout=5))
        with pytest.raises(ReplyError) as err:
            on_loop(hp.read())
        msg = str(err.value)
        assert "not ASCII" in msg and "READ?" in msg and "'hp'" in msg and peer.path in msg
        assert value(hp, "voltage") == 2.5
        assert peer.received == ["*IDN?", "SYST:ERR?", "READ?", "READ?", "READ?"]
    finally:
        hp.close()


# --- in a real RunEngine --------------------------------------------------------------------------


def test_count_and_scan_in_a_run_engine(meter, RE, docs):  # noqa: N803
    server, d = meter()
    RE(bps.mv(d.output, 1))
    RE(bp.count([d], 3))
    RE(bp.scan([d], d.source, -2.0, 2.0, 5))
    docs.validate()
    events = docs.events()
    assert len(events) == 8
    assert all(e["data"]["dmm_voltage"] == 0.0 for e in events[:3])  # the source is at 0 V
    for ev in events[3:]:
        assert ev["data"]["dmm_voltage"] == pytest.approx(ev["data"]["dmm_source"], abs=1e-6)
    assert [e["data"]["dmm_source"] for e in events[3:]] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    conf = docs.of("descriptor")[0]["configuration"]["dmm"]["data"]
    assert conf["dmm_output"] == 1 and conf["dmm_identity"].startswith("DAQBRIDGE-SIM")
    assert "SOUR:VOLT -2" in server.model.received_lines


# --- the [instruments.scpi] table and build() ---------------------------------------------------


def test_build_on_a_session_with_the_tables_termination(visa_manager, RE):  # noqa: N803
    from daqbridge import config

    table = {"signals": SIGNALS, "expected_idn": "SIM0001", "termination": "LF"}
    settings = ScpiSettings.for_stack(table)
    # the profile's table is the driver's model itself
    assert config.ScpiSettings is ScpiSettings and config.ScpiSignal is ScpiSignalSettings
    term = TERMINATIONS[settings.termination]
    session = visa_manager.session(
        SCPI_SIM_RESOURCES[0],
        backend=f"{SCPI_SIM_YAML}@sim",
        read_termination=term,
        write_termination=term,
    )
    d = build(session, name="dmm", settings=settings, timeout=0.5)
    try:
        on_loop(d.connect(timeout=5))
        assert value(d, "voltage") == 1.23456789
        assert d.reply_timeout == 0.5
    finally:
        d.close()
    cr = ScpiSettings.for_stack({**table, "termination": "CR"})
    with pytest.raises(ConfigError, match="termination"):
        build(session, name="dmm", settings=cr, timeout=0.5)


@pytest.mark.parametrize(
    ("signals", "text"),
    [
        ([], "no signals"),
        ([SIGNALS[0], SIGNALS[0]], "twice"),
        ([{"name": "v", "query": "MEAS:VOLT:DC"}], "does not end in '?'"),
        ([{"name": "v", "command": "SOUR:VOLT"}], "exactly one {value}"),
        ([{"name": "trigger", "query": "MEAS?"}], "taken by the device"),
        ([{"name": "port", "query": "MEAS?"}], "taken by the device"),
        ([{"name": "drain_errors", "query": "MEAS?"}], "taken by the device"),
        ([{"name": "v"}], "neither query nor command"),
        ([{"name": "v", "command": "SOUR:VOLT {value};*RST"}], "terminator or separator"),
        ([{"name": "v", "query": "MEAS?", "kind": "fancy"}], "kind"),
        ([{"name": "v", "query": "MEAS?", "dtype": "complex"}], "dtype"),
        ([{"name": "v", "query": "MEAS?", "low": 5, "high": 1}], "not below"),
        ([{"name": "1v", "query": "MEAS?"}], "identifier"),
        ([{"name": "v", "query": "MEAS?", "colour": "red"}], "unknown signal key"),
        ("MEAS?", "must be a list"),
    ],
)
def test_bad_signal_lists_are_config_errors_before_any_byte(signals, text):
    port = ReplayPort([], url="replay://none")
    with pytest.raises(ConfigError, match=text.replace("?", r"\?").replace("{", r"\{")):
        ScpiInstrument(port, signals=signals, name="bad")
    port.assert_done()


def test_the_table_refuses_what_the_device_refuses():
    from daqbridge.devices._registry import validate_settings

    for signals, text in (
        ([{"name": "1v", "query": "MEAS?"}], "identifier"),
        ([{"name": "port", "query": "MEAS?"}], "taken by the device"),
        ([{"name": "v", "query": "MEAS?", "dtype": "str", "low": 0}], "limits"),
        ([{"name": "v", "query": "MEAS?;*RST"}], "terminator or separator"),
    ):
        with pytest.raises(ConfigError, match=text):
            validate_settings(ScpiSettings, {"signals": signals}, instrument="dmm")
        with pytest.raises(ConfigError):
            ScpiInstrument(ReplayPort([]), signals=signals, name="dmm")
    with pytest.raises(ConfigError, match="expected_idn"):
        ScpiInstrument(ReplayPort([]), signals=SIGNALS, name="dmm", expected_idn="\n")


# --- the error queue, overload, faults and several instruments (through VISA) --------------------


def test_errors_drains_the_queue(meter):
    server, d = meter()
    server.model.queue_error(-113)
    server.model.queue_error(-222)
    assert on_loop(d.errors()) == [(-113, "Undefined header"), (-222, "Data out of range")]
    assert on_loop(d.errors()) == []
    assert parse_scpi_error('+0,"No error"') == (0, "No error")
    assert parse_scpi_error("-350,Queue overflow") == (-350, "Queue overflow")


def test_overload_is_a_fault_not_a_number(meter):
    # READ? keeps the fixed range (MEAS? would autorange, as on real DMMs).
    server, d = meter(signals=[{**SIGNALS[0], "query": "READ?"}, *SIGNALS[1:]])
    put(d.output, 1)
    put(d.vrange, 0.1)
    put(d.source, 5.0)
    with pytest.raises(InstrumentFault, match="overload"):
        on_loop(d.read())
    put(d.vrange, 10)
    assert value(d, "voltage") == pytest.approx(5.0, abs=1e-6)


def test_limits_types_and_injected_terminators_never_reach_the_wire(meter):
    spec = [*SIGNALS, {"name": "mode", "command": "CONF:VOLT {value}", "dtype": "str"}]
    server, d = meter(signals=spec)
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
    ):
        with pytest.raises(ValueRejected) as err:
            put(getattr(d, sig), bad)
        assert "'dmm'" in str(err.value)
    with pytest.raises(ValueRejected, match="read-only"):
        on_loop(d.voltage._connector.backend.put(1.0))
    assert list(server.model.received_lines) == before
    put(d.mode, "10")
    assert last(d.mode) == "10" and "CONF:VOLT 10" in server.model.received_lines
    assert on_loop(d.mode.get_value()) == "10"  # what the instrument last accepted


def test_a_point_is_one_lease(meter):
    server, d = meter()
    session = d.port.session
    before = session.stats()["transactions"]
    on_loop(d.read())
    assert session.stats()["transactions"] == before + 1
    on_loop(d.read_configuration())
    assert session.stats()["transactions"] == before + 2


def test_a_late_reply_never_becomes_the_next_reading(meter):
    """Replies come back in order: after a timeout the late answer sits in front of the next one.
    Read as the next query's reply it would be a plausible, silently wrong value (the source
    setting read as the measured voltage); the session resynchronises instead."""
    server, d = meter()
    put(d.output, 1)
    put(d.source, 1.5)
    server.model.faults.reply_delay = 0.8  # longer than the device's 0.5 s timeout
    with pytest.raises(InstrumentTimeout):
        on_loop(d.read())
    server.model.faults.reply_delay = 0.0
    put(d.source, 3.0)
    reading = on_loop(d.read())
    assert reading["dmm_voltage"]["value"] == pytest.approx(3.0, abs=1e-6)
    assert reading["dmm_source"]["value"] == pytest.approx(3.0, abs=1e-6)
    assert d.port.session.stale_discarded >= 1


def test_two_tcp_instruments_are_read_concurrently(meter, RE, docs, wait_until):  # noqa: N803
    server_a, a = meter("dmm_a", serial="A1")
    server_b, b = meter("dmm_b", serial="B2")
    put(a.output, 1)
    put(a.source, 1.25)
    # Slow replies: both sessions must be held at the same moment (one lease per instrument,
    # not one global VISA lock).
    server_a.model.faults.reply_delay = 0.3
    server_b.model.faults.reply_delay = 0.3
    loop = a.connected_loop
    reads = [asyncio.run_coroutine_threadsafe(d.read(), loop) for d in (a, b)]
    assert wait_until(
        lambda: a.port.session._lock.is_held and b.port.session._lock.is_held, timeout=5
    )
    for future in reads:
        future.result(5)
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
    # no thread of their own (the v1 device had a worker each): only the shared VISA I/O pool
    assert not [t.name for t in threading.enumerate() if "dmm_" in t.name]


def test_pyvisa_sim_two_instruments_in_one_plan(visa_manager, RE, docs):  # noqa: N803
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
            on_loop(d.connect(timeout=5))
        put(devices[0].source, -3.5)
        with pytest.raises(InstrumentFault, match='-100,"Command error"'):
            put(devices[1].source, 12.0)  # pyvisa-sim refuses out-of-spec values
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


def test_failed_point_in_a_plan(meter, RE):  # noqa: N803
    server, d = meter()
    server.model.faults.drop_next = 1
    with pytest.raises(InstrumentTimeout) as err:
        RE(bp.count([d], 1))  # an ophyd-async read raises the instrument's own error
    assert "'dmm'" in str(err.value)
    RE(bp.count([d], 1))


def test_profile_signal_models_are_accepted(meter):
    specs = [ScpiSignalSettings(name="voltage", query="MEAS:VOLT:DC?", units="V", kind="hinted")]
    server, d = meter(signals=specs)
    assert value(d, "voltage") == pytest.approx(0.0, abs=1e-6)
    assert d.specs[0] == ScpiSignalSpec(
        name="voltage", query="MEAS:VOLT:DC?", units="V", kind="hinted"
    )


def test_read_signals_asks_now(visa_manager, RE):  # noqa: N803
    session = visa_manager.session(SCPI_SIM_RESOURCES[1], backend=f"{SCPI_SIM_YAML}@sim")
    d = ScpiInstrument(session, signals=SIGNALS[:1], name="quick")
    try:
        call_sync(d.connect(timeout=5), timeout=10)
        assert call_sync(d.read_signals(), device=d, timeout=10) == {"voltage": 1.23456789}
    finally:
        d.close()


# --- the 34401A and Keithley 2000 personalities through VISA (issue 14) --------------------------


def test_34401a_through_visa_follows_the_shared_transcript(visa_manager, transcript, RE):  # noqa: N803
    _, pairs = personality_section("34401a", "driver_connect")
    peer = transcript({})
    peer.replies = in_order(pairs)  # the peer copies a mapping into a plain dict
    session = visa_manager.session(f"ASRL{peer.path}::INSTR", backend="@py")
    d = ScpiInstrument(
        session, signals=SIGNALS_34401A, name="hp", expected_idn="34401A", timeout=1.0
    )
    try:
        on_loop(d.connect(timeout=5))
        assert last(d.function) == "VOLT" and last(d.voltage) == 1.5
        put(d.function, "VOLT:AC")
        put(d.display, 'SAY "HI"')
        assert (last(d.function), last(d.display)) == ("VOLT:AC", 'SAY "HI"')
        with pytest.raises(InstrumentFault) as err:
            put(d.nplc, 3)
        assert err.value.code == -222 and '"Data out of range"' in str(err.value)
        assert peer.received == [sent for sent, _ in pairs]  # every pair, in order
    finally:
        d.close()


def test_keithley2000_through_visa_follows_the_shared_transcript(visa_manager, transcript, RE):  # noqa: N803
    _, pairs = personality_section("keithley2000", "driver_connect")
    peer = transcript({})
    peer.replies = in_order(pairs)
    session = visa_manager.session(f"ASRL{peer.path}::INSTR", backend="@py")
    d = ScpiInstrument(
        session, signals=SIGNALS_KEITHLEY2000, name="k2000", expected_idn="MODEL 2000", timeout=1.0
    )
    try:
        on_loop(d.connect(timeout=5))
        assert last(d.identity).startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2000,")
        put(d.function, "RES")
        assert value(d, "voltage") == 1000.0 and last(d.function) == "RES"
        with pytest.raises(InstrumentFault) as err:
            put(d.source, 1.0)  # a generic-meter signal: the Keithley does not know it
        assert err.value.code == -113 and '"Undefined header"' in str(err.value)
        assert peer.received == [sent for sent, _ in pairs]
    finally:
        d.close()


PROFILE_SIGNALS = {
    "34401a": ("34401A", SIGNALS_34401A),
    "keithley2000": ("MODEL 2000", SIGNALS_KEITHLEY2000[:-1]),
}


@pytest.mark.parametrize("personality", sorted(PROFILE_SIGNALS))
def test_profile_signals_read_real_values_from_each_personality(meter, RE, docs, personality):  # noqa: N803
    idn, signals = PROFILE_SIGNALS[personality]
    specs = [ScpiSignalSettings(**s) for s in signals]
    server, d = meter(
        "meter",
        specs,
        expected_idn=idn,
        personality=personality,
        input_voltage=2.5,
        input_resistance=4700.0,
    )
    RE(bp.count([d], 2))
    server.model.input_voltage = -1.25  # the signal at the meter's input changes
    RE(bp.count([d], 1))
    docs.validate()
    assert [e["data"]["meter_voltage"] for e in docs.events()] == [2.5, 2.5, -1.25]
    conf = docs.of("descriptor")[0]["configuration"]["meter"]["data"]
    assert conf["meter_vrange"] == 10.0 and conf["meter_function"] in ("VOLT", "VOLT:DC")
    RE(bps.mv(d.function, "RES"))
    assert value(d, "voltage") == 4700.0 and last(d.function) == "RES"
    RE(bps.mv(d.vrange, 1.0, d.function, "VOLT:DC"))
    with pytest.raises(InstrumentFault, match="overload"):
        on_loop(d.read())  # -1.25 V on the fixed 1 V range
    assert on_loop(d.errors()) == []


def test_pyvisa_sim_personalities_read_through_the_driver(visa_manager, RE):  # noqa: N803
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
        on_loop(hp.connect(timeout=5))
        on_loop(k2000.connect(timeout=5))
        assert on_loop(hp.read_signals()) == {
            "voltage": 1.23456789,
            "function": "VOLT",
            "setup": "VOLT +1.000000E+01,+1.000000E-05",
        }
        put(hp.function, "VOLT:AC")
        put(k2000.function, "RES")
        assert (last(hp.function), last(k2000.function)) == ("VOLT:AC", "RES")
    finally:
        hp.close()
        k2000.close()
