"""The SCPI instrument's and the PVCAM camera's tables cannot disagree with their devices either.

As tests/config/test_driver_settings.py holds the serial drivers: what ``config check`` accepts in
``[instruments.scpi]`` and ``[instruments.pvcam]`` (and in the entry's ``timeout``, which the
builder hands to the device) builds through the runtime's own builder and connects to a real
simulator, and what the device constructor refuses ``config check`` refuses.

* SCPI: over VISA through the transport's ``VisaSessionManager``, to pyvisa-sim's definition of
  the simulated meter (``visa_backend = "<scpi_instrument.yaml>@sim"``) or to the TCP simulator
  the runtime serves for ``resource = "sim-tcp"``.
* PVCAM: on the runtime's simulated camera (``backend = "sim"``), or on ``PyVcamBackend`` over the
  fake ``pyvcam`` of tests/devices/fake_pyvcam (``backend = "pvcam"``: the SDK cannot exist here).

What only the instrument knows passes ``config check`` by design and is refused at connect, in
words that name it: the ``*IDN?`` reply (``expected_idn``), the camera's sensor (an ROI beyond
it) and the binnings the camera offers. The simulators answer LF only, so an entry with another
``termination`` is built (its VISA session opened with that termination both ways) but not
connected.

The bugs they retired: ``exposure_ms = 0.0005`` or ``1.0005`` (finer than PVCAM's microsecond),
and an entry ``timeout`` under 1 ms, passed ``config check`` and failed start-up; the camera's
constructor took a reversed ROI or a binning of 0 or 65 that ``config check`` refuses (it did
not validate through its settings model); a SCPI query or command with a character that is not
ASCII (``"SOUR:VOLT {value} µV"``) passed both and could never be sent (a raw UnicodeEncodeError
at start-up).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bluesky import RunEngine
from hypothesis import event, example, given
from hypothesis import strategies as st

from daqbridge.config import PvcamInstrument, ScpiInstrument, load_profile
from daqbridge.devices import pvcam as pvcam_module
from daqbridge.devices import registered_drivers
from daqbridge.devices import scpi as scpi_module
from daqbridge.devices.pvcam import PvcamCamera
from daqbridge.devices.scpi import ScpiInstrument as ScpiDevice
from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    IdentityMismatch,
    ReplyError,
    ValueRejected,
)
from daqbridge.runtime._builders import (
    BuildContext,
    NativeInstrument,
    StartupFailed,
    build_native,
    connect_native,
)
from daqbridge.runtime._simulation import Simulation
from daqbridge.sim.pvcam import SimulatedCameraBackend
from daqbridge.sim.scpi import SCPI_SIM_RESOURCES, SCPI_SIM_YAML
from daqbridge.transport import SerialPortPool, VisaSessionManager
from tests.config.test_driver_settings import (
    PROPERTY,
    _drop,
    _set,
    _twice,
    constructor_refuses,
    junk,
    limit_pair,
    mostly,
    profile_errors,
    spoil,
)
from tests.devices.conftest import stop_run_engine
from tests.devices.fake_pyvcam_support import fake_pyvcam


@pytest.fixture(scope="module")
def loop():
    """A RunEngine's event loop: the runtime connects these ophyd-async devices on it."""
    engine = RunEngine({}, context_managers=[])
    yield engine.loop
    stop_run_engine(engine)


@pytest.fixture(scope="module")
def idle_session():
    """A VISA session the constructors are given (they send nothing; each example's build has
    sessions of its own)."""
    with VisaSessionManager() as visa:
        yield visa.session(SCPI_SIM_RESOURCES[0], backend=f"{SCPI_SIM_YAML}@sim")


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (``st.integers(0, n - 1)`` is 0 far more often than that:
    hypothesis favours the simplest value)."""
    return st.sampled_from([False] * (n - 1) + [True])


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def build_entry(
    data: dict, *, pool: SerialPortPool, visa: VisaSessionManager, data_dir: Path, loop: Any
) -> tuple[NativeInstrument, Simulation]:
    """Build (not connect) the entry as start-up does: its simulators started
    (``Simulation.start``), then ``build_native`` with the RunEngine's loop."""
    profile = load_profile(data)
    (inst,) = profile.native_instruments()
    simulation = Simulation.start(profile)
    try:
        context = BuildContext(profile, pool, visa, data_dir, simulation=simulation, loop=loop)
        return build_native(inst, context), simulation
    except BaseException:
        simulation.close()
        raise


def connect_refused(built: NativeInstrument) -> BaseException:
    """What ``connect_native`` refused the built entry with (its cause)."""
    with pytest.raises(StartupFailed) as info:
        connect_native(built, 10.0)
    return info.value.cause


# --- SCPI -----------------------------------------------------------------------------------------

SCPI_SIMULATORS = ("pyvisa-sim", "sim-tcp")


@dataclass(frozen=True)
class Known:
    """A signal both simulators know: its query and command, the dtypes their replies parse as,
    and the value each one answers at connect (pyvisa-sim: SIM0002 of scpi_instrument.yaml; the
    TCP simulator: the generic meter with noise 0, output off)."""

    query: str | None
    command: str | None
    dtypes: tuple[str, ...]
    answers: tuple[Any, Any] = (None, None)

    def answer(self, simulator: str) -> Any:
        return self.answers[SCPI_SIMULATORS.index(simulator)]


SCPI_SIGNALS = (
    Known(
        "*IDN?",
        None,
        ("str",),
        ("DAQBRIDGE-SIM,SCPI-DMM,SIM0002,1.0", "DAQBRIDGE-SIM,SCPI-DMM,SIM0001,1.0"),
    ),
    Known("MEAS:VOLT:DC?", None, ("float", "str"), (1.23456789, 0.0)),
    Known("VOLT:RANG?", "VOLT:RANG {value}", ("float", "str"), (10.0, 0.1)),
    Known("SOUR:VOLT?", "SOUR:VOLT {value}", ("float", "int", "str"), (0.0, 0.0)),
    Known("OUTP?", "OUTP {value}", ("int", "float", "str"), (0, 0)),
    Known("*ESE?", "*ESE {value}", ("int", "float", "str"), (0, 0)),
    Known("*OPC?", None, ("int", "float", "str"), (1, 1)),
    Known(None, "SOUR:VOLT {value}", ("float", "int")),
    Known(None, 'DISP:TEXT "{value}"', ("str",)),
)
KNOWN_QUERIES = {k.query: k for k in SCPI_SIGNALS if k.query is not None}
SIGNAL_NAMES = ["voltage", "source", "vrange", "output", "ese", "opc", "idn", "display", "v2"]
IDN_PARTS = ["DAQBRIDGE-SIM", "SCPI-DMM", "SIM000", ",1.0"]
"""Substrings of both simulators' ``*IDN?`` replies."""
OTHER_IDNS = ["34401A", "sim0001", "KEITHLEY"]
"""Not in their replies: accepted by ``config check``, refused at connect (IdentityMismatch)."""

# Junk for a signal's keys: any text with a '?' could be a query no simulator knows, whose
# refusal at connect is a reply timeout (the instrument stays silent), not this test's matter.
signal_junk = junk.filter(lambda v: not (isinstance(v, str) and "?" in v))


def _signal_junk(draw: Any, entries: list[dict[str, Any]]) -> None:
    entry = draw(st.sampled_from(entries))
    entry[draw(st.sampled_from(sorted(entry) or ["name"]))] = draw(signal_junk)


def _neither(draw: Any, entries: list[dict[str, Any]]) -> None:
    entry = draw(st.sampled_from(entries))
    entry.pop("query", None)
    entry.pop("command", None)


def _limits_not_increasing(draw: Any, entries: list[dict[str, Any]]) -> None:
    entry = draw(st.sampled_from(entries))
    low, high = draw(limit_pair(20.0))
    entry["low"], entry["high"] = (high, low) if draw(st.booleans()) else (low, low)


@st.composite
def scpi_entries(draw) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(simulator, entry keys, ``[instruments.scpi]`` table): 1-4 signals both simulators know,
    each with or without its dtype (one its reply parses as), kind, units, limits (inside and
    around +/-20); half the time the edits a user gets wrong: a name that is no identifier, the
    device's own or twice; a query without '?'; empty text; a second command, a control
    character or a character that is not ASCII in a query or command; a command without exactly
    one {value}; neither query nor command; an unknown kind or dtype; a text signal with limits;
    limits not increasing; a missing or unknown key; no signals; a value of the wrong type. Then
    ``expected_idn`` (in the reply or not), ``termination``, a key of the entry written in the
    table, and the entry's ``timeout`` around its limits (under 1 ms only against pyvisa-sim,
    which answers at once: a TCP round trip may take longer)."""
    simulator = draw(st.sampled_from(SCPI_SIMULATORS))
    count = draw(st.integers(1, 4))
    names = draw(
        st.lists(st.sampled_from(SIGNAL_NAMES), min_size=count, max_size=count, unique=True)
    )
    signals: list[dict[str, Any]] = []
    for name in names:
        known = draw(st.sampled_from(SCPI_SIGNALS))
        signal: dict[str, Any] = {"name": name}
        if known.query is not None:
            signal["query"] = known.query
        if known.command is not None:
            signal["command"] = known.command
        dtype = draw(st.sampled_from(known.dtypes))
        if dtype != "float" or draw(st.booleans()):
            signal["dtype"] = dtype
        if draw(st.booleans()):
            signal["kind"] = draw(st.sampled_from(["hinted", "normal", "config"]))
        if draw(st.booleans()):
            signal["units"] = draw(st.sampled_from(["V", "", "µV", "Ohm"]))  # never sent
        if dtype != "str":
            low, high = draw(limit_pair(25.0))
            sides = draw(st.sampled_from(["none", "both", "low", "high"]))
            if sides in ("both", "low"):
                signal["low"] = low
            if sides in ("both", "high"):
                signal["high"] = high
        signals.append(signal)
    text_key = draw(st.sampled_from(["query", "command"]))
    spoil(
        draw,
        signals,
        {
            "junk": _signal_junk,
            "name not an identifier": _set("name", ["1v", "my signal", "", "v-1", "é", "_v"]),
            "name the device's own": _set(
                "name", ["trigger", "port", "read", "identity", "errors", "stage", "name"]
            ),
            "name twice": _twice("name"),
            "query without ?": _set("query", ["MEAS:VOLT:DC", "*IDN", "OUTP?x"]),
            "empty text": _set(text_key, ["", "   "]),
            "a second command": _set(
                text_key,
                {
                    "query": ["MEAS:VOLT:DC?;*RST", "*RST\nOUTP?", "OUTP?\r"],
                    "command": ["SOUR:VOLT {value};*RST", "OUTP {value}\n"],
                }[text_key],
            ),
            "a control character": _set(
                text_key, {"query": ["MEAS:VOLT:DC?\t"], "command": ["OUTP {value}\x07"]}[text_key]
            ),
            "not ASCII": _set(
                text_key,
                {
                    "query": ["MEAS:VOLT:DC µ?", "SOUR:VOLT°?"],
                    "command": ["SOUR:VOLT {value} µV", 'DISP:TEXT "{value} °C"'],
                }[text_key],
            ),
            "not one {value}": _set(
                "command",
                [
                    "SOUR:VOLT",
                    "SOUR:VOLT {value} {value}",
                    "SOUR:VOLT {val}",
                    "SOUR:VOLT {{value}}",
                    "SOUR:VOLT {value}}",
                ],
            ),
            "neither query nor command": _neither,
            "unknown kind": _set("kind", ["fancy", "Hinted", "", "omitted"]),
            "unknown dtype": _set("dtype", ["complex", "Float", "bool", ""]),
            "text": _set("dtype", ["str"]),  # refused with limits; else any reply parses
            "limits not increasing": _limits_not_increasing,
            "missing name": _drop(["name"]),
            "unknown key": _set(draw(st.sampled_from(["precision", "colour"])), [3]),
            "no signals": lambda draw, entries: entries.clear(),
        },
    )
    table: dict[str, Any] = {"signals": signals}
    if draw(one_in(20)):
        table["signals"] = draw(signal_junk)
    if draw(one_in(3)):
        table["expected_idn"] = draw(
            mostly(st.sampled_from([*IDN_PARTS, *OTHER_IDNS, "", "  ", "SIM\n0001", "SIM\x00"]))
        )
    if draw(one_in(3)):
        table["termination"] = draw(st.sampled_from(["LF", "CR", "CRLF", "LF", "lf", "CRLF ", ""]))
    if draw(one_in(20)):
        table[draw(st.sampled_from(["timeout", "resource", "idn"]))] = 1.0  # not a table key
    entry: dict[str, Any] = {}
    if draw(one_in(3)):
        if simulator == "pyvisa-sim":
            near = [1e-4, 5e-4, 0.001, 0.0015, 0.5, 600, 600.0, 600.5, 601, 0, -1]
            entry["timeout"] = draw(mostly(st.sampled_from(near)))
        else:
            entry["timeout"] = draw(st.sampled_from([0.5, 2, 600, 600.5, 0, -1, True, "1"]))
    return simulator, entry, table


def scpi_profile(simulator: str, entry: dict[str, Any], table: dict[str, Any]) -> dict:
    """A one-instrument simulated lab: the SCPI entry on ``simulator``."""
    if simulator == "pyvisa-sim":
        where = {"resource": SCPI_SIM_RESOURCES[1], "visa_backend": f"{SCPI_SIM_YAML}@sim"}
    else:
        where = {"resource": "sim-tcp", "sim": {"options": {"noise": 0}}}
    return {
        "lab": {"name": "driver settings"},
        "simulation": {"enabled": True},
        "instruments": [
            {"id": "dut", "driver": "scpi", "stack": "native", **where, **entry, "scpi": table}
        ],
    }


def scpi_constructor_refuses(session: Any, table: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether ``ScpiInstrument`` refuses the table's ``signals`` and ``expected_idn`` and the
    entry's ``timeout`` (its keywords), before any byte is sent."""
    kwargs = {key: table[key] for key in ("signals", "expected_idn") if key in table}
    if "timeout" in entry:
        kwargs["timeout"] = entry["timeout"]
    return constructor_refuses(ScpiDevice, session, kwargs)


def scpi_profile_only_refusal(table: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Rules of the profile that the constructor leaves to others (written out here): the table
    has its three keys only; ``termination`` is LF, CR or CRLF (``build`` opens the VISA session
    with it; the constructor takes a session); the entry's timeout is at most 600 s."""
    if set(table) - {"signals", "expected_idn", "termination"}:
        return True
    if "termination" in table and table["termination"] not in ("LF", "CR", "CRLF"):
        return True
    timeout = entry.get("timeout")
    return is_number(timeout) and timeout > 600


def parses(signal: dict[str, Any]) -> bool:
    """Whether the simulators' answer to the signal's query parses as its dtype."""
    if "query" not in signal:
        return True
    # only a spoiled query is not one of them, and every spoiled one must have been refused
    assert signal["query"] in KNOWN_QUERIES, f"accepted a query no simulator knows: {signal}"
    return signal.get("dtype", "float") in KNOWN_QUERIES[signal["query"]].dtypes


def check_scpi_readings(device: Any, signals: list[dict[str, Any]], simulator: str) -> None:
    """What each signal read at connect is what the simulator answers, of the signal's type."""
    initial = {"float": math.nan, "int": 0, "str": ""}
    types = {"float": float, "int": int, "str": str}
    for signal in signals:
        dtype = signal.get("dtype", "float")
        got = getattr(device, signal["name"])._connector.backend.last_reading["value"]
        assert type(got) is types[dtype], (signal, got)
        if "query" not in signal:
            # a command-only signal reads what the instrument last accepted: nothing yet
            want = initial[dtype]
            assert got == want or (math.isnan(want) and math.isnan(got)), (signal, got)
            continue
        want = KNOWN_QUERIES[signal["query"]].answer(simulator)
        if isinstance(want, str) or dtype != "str":
            assert got == want, (signal, got)
        else:
            assert float(got) == want, (signal, got)  # the reply's own text


VOLTAGE = {"name": "voltage", "query": "MEAS:VOLT:DC?"}
SOURCE = {"name": "source", "query": "SOUR:VOLT?", "command": "SOUR:VOLT {value}"}


@PROPERTY
@given(case=scpi_entries())
# Every run also tries the edges where the two sides once disagreed or easily could, in one
# step each: a timeout under 1 ms, text that is not ASCII, a name twice, a termination or
# kind spelt otherwise, a control character in a query or in expected_idn; and accepted tables
# on both simulators.
@example(case=("pyvisa-sim", {"timeout": 5e-4}, {"signals": [VOLTAGE]}))
@example(case=("pyvisa-sim", {}, {"signals": [{**VOLTAGE, "query": "MEAS:VOLT:DC µ?"}]}))
@example(case=("pyvisa-sim", {}, {"signals": [{**SOURCE, "command": "SOUR:VOLT {value} µV"}]}))
@example(case=("pyvisa-sim", {}, {"signals": [VOLTAGE, VOLTAGE]}))
@example(case=("pyvisa-sim", {}, {"signals": [VOLTAGE], "termination": "lf"}))
@example(case=("pyvisa-sim", {}, {"signals": [{**VOLTAGE, "kind": "omitted"}]}))
@example(case=("pyvisa-sim", {}, {"signals": [VOLTAGE], "expected_idn": "SIM\n0001"}))
@example(case=("sim-tcp", {}, {"signals": [{**VOLTAGE, "query": "MEAS:VOLT:DC?\t"}]}))
@example(
    case=(
        "sim-tcp",
        {"timeout": 600},
        {
            "signals": [{**VOLTAGE, "kind": "hinted"}, {**SOURCE, "low": -10, "high": 10.5}],
            "expected_idn": "SIM000",
        },
    )
)
@example(case=("pyvisa-sim", {}, {"signals": [SOURCE], "termination": "CRLF"}))
def test_every_scpi_table_the_profile_accepts_builds_and_every_refusal_agrees(
    case, pool, data_dir, loop, idle_session
):
    """The profile refuses what ``ScpiInstrument`` refuses (plus its rules above), and an
    accepted table builds on a VISA session with the table's termination both ways, and
    connects: each signal holds what the simulator answered, the hinted ones are the hints.

    Refused at connect by design: an ``expected_idn`` the ``*IDN?`` reply does not contain
    (IdentityMismatch), a dtype the reply does not parse as (ReplyError, naming the query)."""
    simulator, entry, table = case
    data = scpi_profile(simulator, entry, table)
    errors = profile_errors(data)
    assert all(
        e.key.startswith(("instruments[0].scpi", "instruments[0].timeout")) for e in errors
    ), errors
    refused = scpi_constructor_refuses(idle_session, table, entry)
    expected = refused or scpi_profile_only_refusal(table, entry)
    assert expected == bool(errors), (table, entry, refused, [str(e) for e in errors])
    if errors:
        event("refused by the profile")
        return
    termination = table.get("termination", "LF")
    signals = table["signals"]
    with VisaSessionManager() as visa:
        built, simulation = build_entry(data, pool=pool, visa=visa, data_dir=data_dir, loop=loop)
        try:
            device = built.root
            term = {"LF": "\n", "CR": "\r", "CRLF": "\r\n"}[termination]
            session = device.port.session.settings
            assert (session["read_termination"], session["write_termination"]) == (term, term)
            assert device.reply_timeout == entry.get("timeout", 2.0)
            assert [s.name for s in device.specs] == [s["name"] for s in signals]
            if termination != "LF":
                event("accepted: built (the simulators answer LF only)")
                return
            idn = table.get("expected_idn")
            if idn is not None and idn not in KNOWN_QUERIES["*IDN?"].answer(simulator):
                event("accepted, refused at connect: another *IDN?")
                cause = connect_refused(built)
                assert isinstance(cause, IdentityMismatch), cause
                assert repr(idn) in cause.what, cause.what
                return
            unparsed = [s for s in signals if not parses(s)]
            if unparsed:
                event("accepted, refused at connect: a reply its dtype cannot parse")
                cause = connect_refused(built)
                assert isinstance(cause, ReplyError), cause
                assert any(repr(s["query"]) in cause.what for s in unparsed), cause.what
                return
            event(f"accepted: built and connected ({simulator})")
            connect_native(built, 10.0)
            check_scpi_readings(device, signals, simulator)
            hinted = [f"dut_{s['name']}" for s in signals if s.get("kind") == "hinted"]
            assert device.hints.get("fields", []) == hinted
        finally:
            built.close()
            simulation.close()


# --- PVCAM ----------------------------------------------------------------------------------------

SENSORS = {"sim": (2048, 2048), "pvcam": (64, 48)}
"""(width, height): the runtime's simulated camera (the simulator's default sensor) and the fake
SDK's PrimeBSI."""
BINNINGS = {(1, 1), (2, 2), (4, 4)}
"""The binnings both cameras offer."""
PVCAM_TABLE_KEYS = {"backend", "exposure_ms", "roi", "binning", "frames_dir"}


def exposures() -> st.SearchStrategy:
    """Exposure times around PVCAM's limits (1 us to one hour, whole microseconds), either side."""
    top = pvcam_module.MAX_EXPOSURE_MS
    edges = [0, 0.0005, 0.0009999, 0.001, 0.0015, 0.002, 1.0005, 12.5, 20, top, top + 0.001]
    whole_microseconds = st.integers(1, 100_000).map(lambda us: us / 1000)
    return st.one_of(
        st.sampled_from([*edges, int(top) + 1, -1]),
        st.integers(1, 100),
        whole_microseconds,
        whole_microseconds,
        st.floats(0, 50, exclude_min=True),
    )


def _one_after(key: str, other: str) -> Any:
    """An edit of the ROI: ``key`` one pixel after ``other`` (when an earlier edit left it an
    integer)."""

    def edit(draw: Any, entries: list[dict[str, Any]]) -> None:
        value = entries[0].get(other)
        if isinstance(value, int) and not isinstance(value, bool):
            entries[0][key] = value + 1

    return edit


@st.composite
def roi_tables(draw, sensor: tuple[int, int], binning: Any) -> dict[str, Any]:
    """An ROI inside the sensor or up to one bin beyond it, in whole bins of ``binning``
    (when it is a valid pair), and then half the time the edits a user gets wrong."""
    bins = binning if isinstance(binning, list) and len(binning) == 2 else [1, 1]
    bins = [b if isinstance(b, int) and 1 <= b <= 64 else 1 for b in bins]
    roi: dict[str, Any] = {}
    for first, last, size, nbin in (
        ("s1", "s2", sensor[0], bins[0]),
        ("p1", "p2", sensor[1], bins[1]),
    ):
        start = draw(st.sampled_from([0, 0, 1, size // 2, max(size - nbin, 0)]))
        most = max(1, (size - start) // nbin)  # bins up to the sensor's edge; one more: beyond
        count = draw(st.one_of(st.integers(1, most), st.sampled_from([most, most + 1])))
        roi[first], roi[last] = start, start + count * nbin - 1
    spoil(
        draw,
        [roi],
        {
            "junk": lambda draw, entries: entries[0].__setitem__(
                draw(st.sampled_from(["s1", "s2", "p1", "p2"])), draw(junk)
            ),
            "reversed": _one_after("s1", "s2"),
            "negative": _set("p1", [-1]),
            "not whole bins": _one_after("s2", "s2"),
            "missing key": _drop(["s1", "s2", "p1", "p2"]),
            "unknown key": _set("x", [0]),
        },
    )
    return roi


@st.composite
def pvcam_entries(draw) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entry keys, ``[instruments.pvcam]`` table): the backend (sim or pvcam, left out for
    pvcam, now and then one that does not exist), the exposure around its limits, a binning the
    cameras offer, one they do not, or one out of 1-64 or not a pair, an ROI around the sensor's
    edges (see ``roi_tables``), ``frames_dir`` (empty or with a control character now and then),
    a key that is not the table's, and the entry's ``timeout`` around its limits."""
    backend = draw(st.sampled_from(["sim", "pvcam"]))
    table: dict[str, Any] = {}
    if backend == "sim" or draw(st.booleans()):
        table["backend"] = backend
    if draw(one_in(10)):
        table["backend"] = draw(mostly(st.sampled_from(["Sim", "pyvcam", "", "simulated"])))
    if draw(st.booleans()):
        table["exposure_ms"] = draw(mostly(exposures()))
    if draw(st.booleans()):
        offered = st.sampled_from([[1, 1], [2, 2], [4, 4]])
        others = [[1, 2], [3, 3], [8, 8], [64, 64], [65, 1], [0, 1], [-1, 1], [2], [2, 2, 2]]
        table["binning"] = draw(mostly(st.one_of(offered, st.sampled_from(others))))
    if draw(st.booleans()):
        table["roi"] = draw(roi_tables(SENSORS[backend], table.get("binning", [1, 1])))
    if draw(one_in(10)):
        table["roi"] = draw(junk)
    if draw(one_in(5)):
        table["frames_dir"] = draw(mostly(st.sampled_from(["frames/a", "frames/b c", "", "a\tb"])))
    if draw(one_in(20)):
        table[draw(st.sampled_from(["trigger_mode", "timeout", "gain"]))] = 1
    entry: dict[str, Any] = {}
    if draw(one_in(3)):
        near = [1e-4, 5e-4, 0.001, 0.002, 0.5, 10, 3600, 3600.0, 3600.5, 3601, 0, -1]
        entry["timeout"] = draw(mostly(st.sampled_from(near)))
    return entry, table


def pvcam_profile(entry: dict[str, Any], table: dict[str, Any]) -> dict:
    """A one-instrument simulated lab: the camera entry ``dut`` naming the PrimeBSI."""
    return {
        "lab": {"name": "driver settings"},
        "simulation": {"enabled": True},
        "instruments": [
            {"id": "dut", "driver": "pvcam", "camera": "PrimeBSI", **entry, "pvcam": table}
        ],
    }


def pvcam_constructor_refuses(table: dict[str, Any], entry: dict[str, Any], where: Path) -> bool:
    """Whether ``PvcamCamera`` refuses the table's exposure, ROI (as a mapping) and binning and
    the entry's timeout (its keywords), before the camera is touched."""
    kwargs = {key: table[key] for key in ("exposure_ms", "binning", "roi") if key in table}
    if "timeout" in entry:
        kwargs["timeout"] = entry["timeout"]
    if isinstance(kwargs.get("roi"), list | str):
        del kwargs["roi"]  # the constructor's sequence form; a table has no such ROI
    if isinstance(kwargs.get("binning"), int):
        del kwargs["binning"]  # the constructor's form for both axes; a table has no such one
    try:
        camera = PvcamCamera("dut", SimulatedCameraBackend(), frames_dir=where, **kwargs)
    except (DaqbridgeError, TypeError):
        return True
    camera.close()
    return False


def pvcam_profile_only_refusal(table: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Rules of the profile that the constructor leaves to others (written out here): the table
    has its five keys only; ``backend`` is sim or pvcam and ``frames_dir`` is text with no
    control character (the builder turns them into the backend and the directory the
    constructor takes); an ROI is a table and a binning a list (the constructor also takes
    ``(s1, s2, p1, p2)`` and one number for both axes); the entry's timeout is at most 3600 s."""
    if set(table) - PVCAM_TABLE_KEYS:
        return True
    if "backend" in table and table["backend"] not in ("sim", "pvcam"):
        return True
    if "frames_dir" in table:
        frames_dir = table["frames_dir"]
        if not isinstance(frames_dir, str) or not frames_dir.strip():
            return True
        if not frames_dir.isprintable():
            return True
    if "roi" in table and not isinstance(table["roi"], dict):
        return True
    if "binning" in table and not isinstance(table["binning"], list):
        return True
    timeout = entry.get("timeout")
    return is_number(timeout) and timeout > 3600


FULL_FAKE_SENSOR = {"s1": 0, "s2": 63, "p1": 0, "p2": 47}


@PROPERTY
@given(case=pvcam_entries())
# Every run also tries the edges where the two sides once disagreed or easily could, in one
# step each: the exposure's floor, step and ceiling, a reversed or negative ROI, a binning out
# of range, a timeout under 1 ms; and the fake SDK camera's last pixel, and one beyond it.
@example(case=({}, {"backend": "sim", "exposure_ms": 0.0005}))
@example(case=({}, {"backend": "sim", "exposure_ms": 1e-10}))  # 0 us: only the floor refuses it
@example(case=({}, {"backend": "sim", "exposure_ms": 1.0005}))
@example(case=({}, {"backend": "sim", "exposure_ms": pvcam_module.MAX_EXPOSURE_MS + 0.001}))
@example(case=({}, {"backend": "sim", "roi": {**FULL_FAKE_SENSOR, "s1": 64}}))
@example(case=({}, {"backend": "sim", "roi": {**FULL_FAKE_SENSOR, "p1": -1}}))
@example(case=({}, {"backend": "sim", "binning": [65, 1]}))
@example(case=({"timeout": 5e-4}, {"backend": "sim", "exposure_ms": 0.001}))
@example(case=({}, {"roi": FULL_FAKE_SENSOR, "binning": [4, 4], "exposure_ms": 0.25}))
@example(case=({}, {"roi": {**FULL_FAKE_SENSOR, "p2": 48}}))
def test_every_pvcam_table_the_profile_accepts_builds_and_every_refusal_agrees(
    case, pool, data_dir, loop
):
    """The profile refuses what ``PvcamCamera`` refuses (plus its rules above), and an accepted
    table builds on its backend and connects: the camera holds the exposure, ROI (the full
    sensor when unset), binning and timeout, and its frames directory exists.

    Refused at connect by design, naming the camera's limits: a binning the camera does not
    offer, an ROI beyond its sensor."""
    entry, table = case
    data = pvcam_profile(entry, table)
    errors = profile_errors(data)
    assert all(
        e.key.startswith(("instruments[0].pvcam", "instruments[0].timeout")) for e in errors
    ), errors
    refused = pvcam_constructor_refuses(table, entry, data_dir / "constructed")
    expected = refused or pvcam_profile_only_refusal(table, entry)
    assert expected == bool(errors), (table, entry, refused, [str(e) for e in errors])
    if errors:
        event("refused by the profile")
        return
    backend = table.get("backend", "pvcam")
    width, height = SENSORS[backend]
    binning = tuple(table.get("binning", [1, 1]))
    roi = table.get("roi")
    sdk = fake_pyvcam() if backend == "pvcam" else contextlib.nullcontext()
    with sdk, VisaSessionManager() as visa:
        built, simulation = build_entry(data, pool=pool, visa=visa, data_dir=data_dir, loop=loop)
        try:
            camera = built.root
            assert camera.timeout == entry.get("timeout", 10.0)
            frames_dir = data_dir / table.get("frames_dir", "frames/dut")
            assert camera.frames_dir == frames_dir.absolute()
            if binning not in BINNINGS:
                event("accepted, refused at connect: a binning the camera does not offer")
                cause = connect_refused(built)
                assert isinstance(cause, ValueRejected), cause
                assert f"binning {list(binning)!r} is not supported" in cause.what, cause.what
                return
            if roi is not None and (roi["s2"] >= width or roi["p2"] >= height):
                event("accepted, refused at connect: an ROI beyond the sensor")
                cause = connect_refused(built)
                assert isinstance(cause, ValueRejected), cause
                assert f"outside the {width} x {height} sensor" in cause.what, cause.what
                return
            event(f"accepted: built and connected ({backend})")
            connect_native(built, 10.0)
            assert camera.info.name == "PrimeBSI"
            assert camera.info.sensor_size == (width, height)
            assert camera.exposure.held.value == table.get("exposure_ms", 20.0)
            assert camera.binning.held.value == list(binning)
            full = [0, width - 1, 0, height - 1]
            assert camera.roi.held.value == (
                full if roi is None else [roi[k] for k in "s1 s2 p1 p2".split()]
            )
            assert frames_dir.is_dir()
        finally:
            built.close()
            simulation.close()


# --- the bugs, one example each ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"exposure_ms": 0.0005}, "exposure_ms"),
        ({"exposure_ms": 1.0005}, "exposure_ms"),
        ({"roi": {"s1": 10, "s2": 5, "p1": 0, "p2": 47}}, "roi.s2"),
        ({"binning": [65, 1]}, "binning[0]"),
        ({"binning": [1, 0]}, "binning[1]"),
    ],
)
def test_the_camera_refuses_what_config_check_refuses_naming_the_same_key(table, key, tmp_path):
    """When built, before any camera is found: the constructor validates through the model."""
    (issue,) = profile_errors(pvcam_profile({}, table))
    assert issue.key == f"instruments[0].pvcam.{key}"
    with pytest.raises(ConfigError) as info:
        PvcamCamera("dut", SimulatedCameraBackend(), frames_dir=tmp_path, **table)
    assert info.value.key == key


def test_an_exposure_finer_than_a_microsecond_is_refused_in_the_same_words(tmp_path):
    (issue,) = profile_errors(pvcam_profile({}, {"exposure_ms": 1.0005}))
    with pytest.raises(ConfigError) as info:
        PvcamCamera("dut", SimulatedCameraBackend(), frames_dir=tmp_path, exposure_ms=1.0005)
    assert "not a whole number of microseconds" in issue.what
    assert issue.what.rstrip(".") in info.value.what
    assert issue.fix.rstrip(".") in info.value.fix


@pytest.mark.parametrize(
    "signal",
    [
        {"name": "v", "query": "MEAS:VOLT:DC µ?"},
        {"name": "v", "command": "SOUR:VOLT {value} µV"},
    ],
)
def test_a_scpi_signal_that_is_not_ascii_is_refused_by_both(signal, idle_session):
    """IEEE 488.2 program messages are ASCII: such a query or command can never be sent."""
    (issue,) = profile_errors(scpi_profile("pyvisa-sim", {}, {"signals": [signal]}))
    key = "query" if "query" in signal else "command"
    assert issue.key == f"instruments[0].scpi.signals[0].{key}"
    assert "not ASCII" in issue.what
    with pytest.raises(ConfigError, match="not ASCII"):
        ScpiDevice(idle_session, signals=[signal], name="dut")


# --- one home for each fact ---------------------------------------------------------------------


def test_the_profile_uses_the_scpi_and_pvcam_drivers_own_models():
    specs = registered_drivers()
    assert ScpiInstrument.model_fields["scpi"].annotation is specs["scpi"].settings
    assert specs["scpi"].settings is scpi_module.ScpiSettings
    assert PvcamInstrument.model_fields["pvcam"].annotation is specs["pvcam"].settings
    assert specs["pvcam"].settings is pvcam_module.PvcamSettings


def test_the_camera_models_exposure_bounds_are_the_driver_modules_constants():
    fields = pvcam_module.PvcamSettings.model_fields
    bounds = {type(m).__name__: m for m in fields["exposure_ms"].metadata}
    assert bounds["Ge"].ge == pvcam_module.MIN_EXPOSURE_MS
    assert bounds["Le"].le == pvcam_module.MAX_EXPOSURE_MS
