"""Generic SCPI instrument on ophyd-async, side by side with the v1 device: pinned to the shared
transcripts byte for byte (ReplayPort), checked against the simulators through real VISA (the
TCP simulator over pyvisa-py, its model's inputs being the truth; pyvisa-sim's fixed reading), in
a real RunEngine, and described exactly as the v1 device describes the same specs.

Devices on a VISA session live on the RunEngine's loop (the ``RE`` fixture starts it); the tests
reach them from their own thread with :func:`daqbridge.devices.core.call_sync`.
"""

from __future__ import annotations

import asyncio
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
from daqbridge.devices.scpi import ScpiInstrument
from daqbridge.devices.scpi_async import (
    TERMINATIONS,
    ScpiInstrumentAsync,
    ScpiSettings,
    build,
)
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    ReplyError,
    ValueRejected,
)
from daqbridge.sim.scpi import SCPI_SIM_RESOURCES, SCPI_SIM_YAML, serve_tcp
from tests.devices.test_scpi import SIGNALS, SIGNALS_34401A, SIGNALS_KEITHLEY2000, in_order

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts"
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


def value(device: ScpiInstrumentAsync, signal: str) -> Any:
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
        device = ScpiInstrumentAsync(
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

    async def body() -> ScpiInstrumentAsync:
        hp = ScpiInstrumentAsync(port, signals=SIGNALS_34401A, name="hp", expected_idn="34401A")
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
        k = ScpiInstrumentAsync(
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
    d = ScpiInstrumentAsync(port, signals=SIGNALS_34401A, name="dmm", expected_idn="KEITHLEY")
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
        hp = ScpiInstrumentAsync(port, signals=SIGNALS_34401A, name="hp")
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
        hp = ScpiInstrumentAsync(port, signals=SIGNALS_34401A, name="hp")
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
        k = ScpiInstrumentAsync(port, signals=SIGNALS_KEITHLEY2000, name="k2000")
        await k.connect()
        await k.source.set(10.5)  # the spec's high is 10

    with pytest.raises(ValueRejected, match=r"outside the limits \[-10.0, 10.0\]"):
        run(body())
    port.assert_done()


# --- descriptors: the v1 device's, key for key ----------------------------------------------------


@pytest.mark.parametrize(
    "signals",
    [[*SIGNALS, COMMAND_ONLY], SIGNALS_34401A, SIGNALS_KEITHLEY2000],
    ids=["generic", "34401a", "keithley2000"],
)
def test_descriptors_equal_the_v1_devices_for_the_same_specs(visa_manager, signals):
    session = visa_manager.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")
    v1 = ScpiInstrument(session, signals=signals, name="meter")
    native = ScpiInstrumentAsync(session, signals=signals, name="meter")
    try:
        described = run(native.describe())
        configuration = run(native.describe_configuration())
        # equal, and in the same order: a descriptor's object_keys are lists
        assert described == dict(v1.describe()) and list(described) == list(v1.describe())
        assert configuration == dict(v1.describe_configuration())
        assert list(configuration) == list(v1.describe_configuration())
        assert native.hints == v1.hints
        for name, key in {**described, **configuration}.items():
            assert key["source"].startswith(f"SCPI {session.label} ")  # instrument, resource
            assert set(key) <= {"dtype", "shape", "source", "units", "limits"}, name
    finally:
        v1.close()


def test_kinds_types_and_protocols():
    port = ReplayPort([], url="replay://none")
    d = ScpiInstrumentAsync(port, signals=[*SIGNALS, COMMAND_ONLY], name="dmm")
    for proto in (Readable, Triggerable, Configurable):
        assert isinstance(d, proto)
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
    d = ScpiInstrumentAsync(session, signals=SIGNALS, name="sim1", expected_idn="SIM0002")
    v1 = ScpiInstrument(session, signals=SIGNALS, name="sim1_v1", timeout=0.5)
    try:
        on_loop(d.connect(timeout=5))
        assert value(d, "voltage") == 1.23456789  # the fixed reading of scpi_instrument.yaml
        put(d.source, -3.5)
        assert last(d.source) == -3.5
        # the v1 device on the same session (its blocking leases, ours on the loop) agrees
        v1.connect()
        assert v1.read_signals(["voltage", "source"]) == {"voltage": 1.23456789, "source": -3.5}
        with pytest.raises(InstrumentFault, match='-100,"Command error"'):
            put(d.source, 12.0)  # pyvisa-sim refuses out-of-spec values
        assert value(d, "source") == -3.5
    finally:
        v1.close()
        d.close()


def test_v1_and_async_leases_on_one_session_serialise(visa_manager, RE, wait_until):  # noqa: N803
    session = visa_manager.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")
    d = ScpiInstrumentAsync(session, signals=SIGNALS, name="sim0")
    try:
        on_loop(d.connect(timeout=5))
        with session.lease("v1 driver"):  # a blocking lease, as the v1 device takes them
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
    hp = ScpiInstrumentAsync(session, signals=SIGNALS_34401A[:1], name="hp", timeout=1.0)
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


def test_a_run_records_what_the_v1_device_records(meter, visa_manager, RE, docs):  # noqa: N803
    """The same specs, instrument and session, recorded by each stack: one schema."""
    server, native = meter("meter")
    v1 = ScpiInstrument(
        visa_manager.session(server.resource, backend="@py"),
        signals=SIGNALS,
        name="meter",
        timeout=0.5,
    )
    try:
        v1.connect()
        RE(bp.count([v1], 2))
        RE(bp.count([native], 2))
    finally:
        v1.close()
    docs.validate()
    old, new = docs.of("descriptor")
    assert new["data_keys"] == old["data_keys"]
    assert new["object_keys"] == old["object_keys"]
    assert new["hints"] == old["hints"]
    assert new["configuration"]["meter"]["data_keys"] == old["configuration"]["meter"]["data_keys"]
    assert new["configuration"]["meter"]["data"] == old["configuration"]["meter"]["data"]
    events = docs.events()
    assert [e["data"] for e in events[2:]] == [e["data"] for e in events[:2]]


# --- the [instruments.scpi] table and build() ---------------------------------------------------


def test_build_on_a_session_with_the_tables_termination(visa_manager, RE):  # noqa: N803
    from daqbridge.config._models import ScpiSettings as ProfileScpiSettings

    table = {"signals": SIGNALS, "expected_idn": "SIM0001", "termination": "LF"}
    settings = ScpiSettings.for_stack(table)
    # the profile accepts this table today, and the driver's model reads it the same way
    assert ProfileScpiSettings.model_validate(table).model_dump() == settings.model_dump()
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
    ],
)
def test_bad_signal_lists_are_config_errors_before_any_byte(signals, text):
    port = ReplayPort([], url="replay://none")
    with pytest.raises(ConfigError, match=text.replace("?", r"\?").replace("{", r"\{")):
        ScpiInstrumentAsync(port, signals=signals, name="bad")
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
            ScpiInstrumentAsync(ReplayPort([]), signals=signals, name="dmm")
    with pytest.raises(ConfigError, match="expected_idn"):
        ScpiInstrumentAsync(ReplayPort([]), signals=SIGNALS, name="dmm", expected_idn="\n")
