"""The SCPI simulator, driven through real pyvisa-py sockets and through pyvisa-sim."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import pyvisa
import serial
import yaml

from daqbridge.errors import ConfigError
from daqbridge.sim import Faults
from daqbridge.sim.scpi import (
    PERSONALITIES,
    SCPI_SIM_PERSONALITY_RESOURCES,
    SCPI_SIM_RESOURCES,
    SCPI_SIM_YAML,
    ScpiInstrumentModel,
    serve_tcp,
)

NR3 = re.compile(r"^[+-]\d\.\d{8}E[+-]\d{2}$")
IDN = "DAQBRIDGE-SIM,SCPI-DMM,SIM0001,1.0"


@pytest.fixture(scope="module")
def rm():
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


@pytest.fixture
def server():
    with serve_tcp(ScpiInstrumentModel(noise=1e-5, seed=1)) as srv:
        yield srv


@pytest.fixture
def open_inst(rm):
    opened = []

    def _open(resource: str, timeout_ms: int = 2000):
        inst = rm.open_resource(
            resource, read_termination="\n", write_termination="\n", timeout=timeout_ms
        )
        opened.append(inst)
        return inst

    yield _open
    for inst in opened:
        inst.close()


@pytest.fixture
def dmm(server, open_inst):
    return open_inst(server.resource)


def assert_silent(inst, timeout_ms: int = 300) -> None:
    """A set command must not reply: reading gives a VISA timeout, not stray bytes."""
    old = inst.timeout
    inst.timeout = timeout_ms
    try:
        with pytest.raises(pyvisa.errors.VisaIOError) as info:
            inst.read()
        assert info.value.error_code == pyvisa.constants.StatusCode.error_timeout
    finally:
        inst.timeout = old


# --- identity and common commands -------------------------------------------------------------


def test_resource_string_names_loopback_port(server):
    assert server.host == "127.0.0.1"
    assert server.resource == f"TCPIP0::127.0.0.1::{server.port}::SOCKET"
    assert server.port > 0


def test_idn_over_pyvisa_py(dmm):
    assert dmm.query("*IDN?") == IDN


def test_identity_is_configurable(open_inst):
    model = ScpiInstrumentModel(manufacturer="ACME", model="DMM-9", serial="X42", firmware="2.3")
    with serve_tcp(model) as srv:
        assert open_inst(srv.resource).query("*IDN?") == "ACME,DMM-9,X42,2.3"


def test_bad_options_are_refused_clearly():
    with pytest.raises(ConfigError, match=r"serial 'A,B' is not a valid \*IDN\? field"):
        ScpiInstrumentModel(serial="A,B")
    with pytest.raises(ConfigError, match="noise must be a float, got 'loud'"):
        ScpiInstrumentModel(noise="loud")
    with pytest.raises(ConfigError, match="bad fault option"):
        with serve_tcp(reply_delay="soon"):
            pass


def test_options_given_as_text_like_the_cli():
    with serve_tcp(noise="0", seed="3", stuck="false", drop_next="1") as srv:
        assert srv.model.noise == 0.0 and srv.model.faults.drop_next == 1
        assert srv.model.faults.seed == 3


def test_opc_query_and_opc_sets_esr_bit0(dmm):
    assert dmm.query("*ESR?") == "128"  # power-on bit, set at power-up
    assert dmm.query("*OPC?") == "1"
    dmm.write("*OPC")
    assert_silent(dmm)
    assert int(dmm.query("*ESR?")) & 1


# --- status registers --------------------------------------------------------------------------


def test_esr_power_on_then_cleared_on_read(dmm):
    assert int(dmm.query("*ESR?")) == 128
    assert int(dmm.query("*ESR?")) == 0


def test_unknown_header_queues_113_sets_command_error_and_stays_silent(dmm):
    dmm.query("*ESR?")
    dmm.write("FOO:BAR 1")
    assert_silent(dmm)
    assert dmm.query("SYST:ERR?") == '-113,"Undefined header"'
    assert dmm.query("SYST:ERR?") == '+0,"No error"'
    assert int(dmm.query("*ESR?")) & 32  # command error


def test_unknown_query_gives_no_reply(dmm):
    dmm.write("NOSUCH:THING?")
    assert_silent(dmm)
    assert dmm.query("SYSTem:ERRor:NEXT?") == '-113,"Undefined header"'


def test_error_queue_is_fifo_and_empty_reads_no_error(dmm):
    dmm.write("BOGUS")
    dmm.write("SOUR:VOLT 99")
    dmm.write("SOUR:VOLT abc")
    assert dmm.query("SYST:ERR:COUN?") == "3"
    assert dmm.query("SYST:ERR?") == '-113,"Undefined header"'
    assert dmm.query("SYSTem:ERRor?") == '-222,"Data out of range"'
    assert dmm.query("syst:err:next?") == '-104,"Data type error"'
    assert dmm.query("SYST:ERR?") == '+0,"No error"'


def test_error_queue_overflow_keeps_350_last(server):
    model = server.model
    for _ in range(30):
        model.execute("BOGUS")
    errors = list(model.errors)
    assert len(errors) == 20
    assert errors[-1][0] == -350 and errors[0][0] == -113


def test_stb_error_bit_esb_masked_by_ese_and_rqs_by_sre(dmm):
    dmm.query("*ESR?")
    assert dmm.query("*STB?") == "0"
    dmm.write("BOGUS")
    stb = int(dmm.query("*STB?"))
    assert stb & 4  # error queue not empty
    assert not stb & 32  # ESE is 0: the command-error bit is not enabled
    dmm.write("*ESE 32")
    assert dmm.query("*ESE?") == "32"
    assert int(dmm.query("*STB?")) & 32  # now enabled: ESB set
    dmm.write("*SRE 32")
    assert int(dmm.query("*STB?")) & 64  # ESB enabled for service request: RQS/MSS
    dmm.write("*ESE 16")  # enable execution errors only: the command error no longer counts
    assert not int(dmm.query("*STB?")) & 32
    dmm.write("*CLS")
    assert dmm.query("*STB?") == "0"
    assert dmm.query("SYST:ERR?") == '+0,"No error"'
    assert dmm.query("*ESE?") == "16"  # *CLS does not touch the enable registers


def test_stb_message_available_bit(dmm):
    idn, stb = dmm.query("*IDN?;*STB?").split(";")
    assert idn.endswith("1.0")  # *IDN? replies contain commas, not ';'
    assert int(stb) & 16  # the *IDN? reply waits in the output queue: MAV
    assert not int(dmm.query("*STB?")) & 16


def test_ese_out_of_range_is_execution_error(dmm):
    dmm.query("*ESR?")
    dmm.write("*ESE 300")
    assert dmm.query("SYST:ERR?") == '-222,"Data out of range"'
    assert int(dmm.query("*ESR?")) & 16


def test_rst_resets_settings_not_status(dmm):
    dmm.write("SOUR:VOLT 3;OUTP ON;BOGUS")
    dmm.write("*RST")
    assert dmm.query("OUTP?") == "0"
    assert float(dmm.query("SOUR:VOLT?")) == 0.0
    assert dmm.query("SYST:ERR?") == '-113,"Undefined header"'


# --- measurement and source --------------------------------------------------------------------


def test_set_commands_are_silent(dmm):
    dmm.write("SOUR:VOLT 2")
    assert_silent(dmm)
    dmm.write("OUTP ON")
    assert_silent(dmm)
    assert float(dmm.query("SOUR:VOLT?")) == 2.0


def test_long_short_and_lower_case_forms_are_the_same_command(dmm):
    dmm.write("SOURce:VOLTage:LEVel:IMMediate:AMPLitude 1.5")
    assert float(dmm.query("sour:volt?")) == 1.5
    dmm.write(":OUTPut:STATe 1")
    assert dmm.query("OUTPut?") == "1"
    for query in ("MEAS:VOLT:DC?", "MEASure:VOLTage:DC?", "measure:voltage:dc?", ":MEAS?"):
        reply = dmm.query(query)
        assert NR3.match(reply), reply
        assert abs(float(reply) - 1.5) < 1e-3


def test_several_commands_on_one_line_and_joined_replies(dmm):
    reply = dmm.query("SOUR:VOLT 0.5;:OUTP ON;:SOUR:VOLT?;:OUTP?")
    volt, state = reply.split(";")
    assert float(volt) == 0.5 and state == "1"


def test_relative_path_after_semicolon(dmm):
    assert float(dmm.query("SOUR:VOLT 1.25;VOLT?")) == 1.25


def test_measurement_follows_source_plus_noise(dmm):
    dmm.write("SOUR:VOLT 2.5")
    assert abs(float(dmm.query("MEAS:VOLT:DC?"))) < 1e-3  # output off: nothing to measure
    dmm.write("OUTP ON")
    readings = [float(dmm.query("MEAS:VOLT:DC?")) for _ in range(5)]
    assert all(abs(r - 2.5) < 1e-3 for r in readings)
    assert len(set(readings)) > 1  # noise, not a canned value


def test_fixed_range_overload_and_autorange(dmm):
    dmm.write("SOUR:VOLT 5;OUTP ON;VOLT:RANG 1")
    assert float(dmm.query("VOLT:RANG?")) == 1.0
    assert dmm.query("VOLT:RANG:AUTO?") == "0"
    assert float(dmm.query("READ?")) == 9.9e37
    dmm.write("VOLT:RANG:AUTO ON")
    assert abs(float(dmm.query("READ?")) - 5) < 1e-3
    assert float(dmm.query("VOLT:RANG?")) == 10.0


def test_trigger_count_gives_that_many_readings(dmm):
    dmm.write("SOUR:VOLT -1;OUTP ON;TRIG:COUN 4")
    assert dmm.query("TRIG:COUN?") == "4"
    readings = dmm.query("READ?").split(",")
    assert len(readings) == 4 and all(abs(float(r) + 1) < 1e-3 for r in readings)
    dmm.write("INIT")
    assert len(dmm.query("FETC?").split(",")) == 4


def test_source_out_of_range_is_refused_and_keeps_value(dmm):
    dmm.query("*ESR?")
    dmm.write("SOUR:VOLT 1")
    dmm.write("SOUR:VOLT 11")
    assert_silent(dmm)
    assert float(dmm.query("SOUR:VOLT?")) == 1.0
    assert dmm.query("SYST:ERR?") == '-222,"Data out of range"'
    assert int(dmm.query("*ESR?")) & 16  # execution error
    assert float(dmm.query("SOUR:VOLT? MAX")) == 10.0


def test_missing_and_extra_parameters(dmm):
    dmm.write("SOUR:VOLT")
    dmm.write("*IDN? 3")
    dmm.write("OUTP MAYBE")
    assert dmm.query("SYST:ERR?") == '-109,"Missing parameter"'
    assert dmm.query("SYST:ERR?") == '-108,"Parameter not allowed"'
    assert dmm.query("SYST:ERR?") == '-224,"Illegal parameter value"'


def test_command_error_discards_rest_of_line(dmm):
    dmm.write("BOGUS;*OPC?")
    assert_silent(dmm)  # IEEE 488.2: the parser skips to the end of the message
    dmm.write("BOGUS;SOUR:VOLT 4")
    assert float(dmm.query("SOUR:VOLT?")) == 0.0  # the unit after a command error never ran
    dmm.write("SOUR:VOLT 99;SOUR:VOLT 4")
    assert float(dmm.query("SOUR:VOLT?")) == 4.0  # an execution error does not stop the line


# --- concurrency and transport -----------------------------------------------------------------


def test_two_connections_share_one_instrument_and_never_mix_replies(server, open_inst):
    a = open_inst(server.resource)
    b = open_inst(server.resource)
    a.write("SOUR:VOLT 3.5")
    # Two sockets are two queues: only a's own *OPC? says its write was executed before b asks.
    assert a.query("*OPC?") == "1"
    assert float(b.query("SOUR:VOLT?")) == 3.5
    assert server.connection_count == 2

    failures: list[str] = []

    def hammer(inst, query, check):
        for _ in range(40):
            reply = inst.query(query)
            if not check(reply):
                failures.append(f"{query} -> {reply!r}")

    threads = [
        threading.Thread(target=hammer, args=(a, "*IDN?", lambda r: r == IDN)),
        threading.Thread(target=hammer, args=(b, "SOUR:VOLT?", lambda r: float(r) == 3.5)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_client_disconnect_mid_line_leaves_server_serving(server, open_inst):
    raw = socket.create_connection((server.host, server.port), timeout=2)
    raw.sendall(b"SOUR:VOLT 7")  # no terminator: a partial line
    raw.close()
    dmm = open_inst(server.resource)
    assert dmm.query("*IDN?") == IDN
    assert float(dmm.query("SOUR:VOLT?")) == 0.0
    assert "SOUR:VOLT 7" not in server.model.received_lines


def test_crlf_terminated_lines_are_accepted(server):
    with socket.create_connection((server.host, server.port), timeout=2) as raw:
        raw.sendall(b"*IDN?\r\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = raw.recv(1024)
            assert chunk
            reply += chunk
    assert reply == IDN.encode() + b"\n"


def test_shutdown_is_bounded_with_clients_connected(open_inst):
    with serve_tcp() as srv:
        dmm = open_inst(srv.resource)
        assert dmm.query("*OPC?") == "1"
        resource, port = srv.resource, srv.port
        started = time.monotonic()
    assert time.monotonic() - started < 3.0
    leftover = [t.name for t in threading.enumerate() if t.name.endswith(f":{port}")]
    assert leftover == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert resource.endswith("::SOCKET")


def test_serve_tcp_takes_model_or_options_not_both():
    with serve_tcp(serial="SIM0009", noise=0.0) as srv:
        assert srv.model.identity.split(",")[2] == "SIM0009"
        assert srv.model.execute("MEAS?") == "+0.00000000E+00"
    with serve_tcp(drop_next=1) as srv:
        assert srv.model.faults.drop_next == 1
        assert srv.model.receive("*OPC?") == []
    with pytest.raises(TypeError, match="model"):
        with serve_tcp(ScpiInstrumentModel(), noise=0.0):
            pass


# --- faults ------------------------------------------------------------------------------------


def test_fault_drop_next_loses_exactly_one_reply(server, dmm):
    server.model.faults.drop_next = 1
    dmm.timeout = 300
    with pytest.raises(pyvisa.errors.VisaIOError):
        dmm.query("*IDN?")
    assert dmm.query("*IDN?") == IDN


def test_fault_garble_next_keeps_framing_but_corrupts(server, dmm):
    server.model.faults.garble_next = 1
    garbled = dmm.query("*IDN?")
    assert garbled != IDN and len(garbled) == len(IDN)
    assert dmm.query("*IDN?") == IDN


def test_fault_reply_delay(server, dmm):
    server.model.faults.reply_delay = 0.3
    started = time.monotonic()
    assert dmm.query("*OPC?") == "1"
    assert time.monotonic() - started >= 0.25
    server.model.faults.reply_delay = 0.0


def test_fault_stuck_swallows_commands(server, dmm):
    server.model.faults.stuck = True
    dmm.write("SOUR:VOLT 6")
    dmm.timeout = 300
    with pytest.raises(pyvisa.errors.VisaIOError):
        dmm.query("*IDN?")
    server.model.faults.stuck = False
    dmm.timeout = 2000
    assert float(dmm.query("SOUR:VOLT?")) == 0.0  # a stuck instrument executed nothing
    assert "SOUR:VOLT 6" in server.model.received_lines


def test_faults_object_can_be_given():
    model = ScpiInstrumentModel(faults=Faults(drop_next=2))
    assert model.receive("*IDN?") == []
    assert model.receive("*IDN?") == []
    assert model.receive("*IDN?") == [(0.0, IDN.encode() + b"\n")]


# --- pyvisa-sim definition ---------------------------------------------------------------------


@pytest.fixture
def sim_rm():
    manager = pyvisa.ResourceManager(f"{SCPI_SIM_YAML}@sim")
    yield manager
    manager.close()


def _open_sim(manager, resource):
    return manager.open_resource(
        resource, read_termination="\n", write_termination="\n", timeout=300
    )


def test_yaml_is_packaged_and_defines_two_instruments(sim_rm):
    assert SCPI_SIM_YAML.is_file()
    a, b = (_open_sim(sim_rm, r) for r in SCPI_SIM_RESOURCES)
    assert a.query("*IDN?") == "DAQBRIDGE-SIM,SCPI-DMM,SIM0001,1.0"
    assert b.query("*IDN?") == "DAQBRIDGE-SIM,SCPI-DMM,SIM0002,1.0"
    assert a.query("*OPC?") == "1"
    assert NR3.match(a.query("MEAS:VOLT:DC?"))


def test_yaml_source_voltage_set_get_and_range_error(sim_rm):
    a, b = (_open_sim(sim_rm, r) for r in SCPI_SIM_RESOURCES)
    a.write("SOUR:VOLT 2.5")
    assert_silent(a)
    assert float(a.query("SOUR:VOLT?")) == 2.5
    assert float(b.query("SOUR:VOLT?")) == 0.0  # two independent instruments
    assert a.query("SYST:ERR?") == '+0,"No error"'
    a.write("SOUR:VOLT 12")
    assert_silent(a)
    assert float(a.query("SOUR:VOLT?")) == 2.5  # refused, the old value stays
    assert a.query("SYST:ERR?") != '+0,"No error"'
    assert a.query("*ESR?") == "32"
    assert a.query("*ESR?") == "0"


def test_yaml_output_and_unknown_header(sim_rm):
    a = _open_sim(sim_rm, SCPI_SIM_RESOURCES[0])
    a.write("OUTP 1")
    assert a.query("OUTP?") == "1"
    a.write("FOO")
    assert_silent(a)
    assert a.query("SYST:ERR?") == '-100,"Command error"'


# --- the 34401A and Keithley 2000 personalities (issue 14) ---------------------------------------
# Pinned to tests/transcripts/scpi_34401a.yaml and scpi_keithley2000.yaml, the same pairs the
# driver tests replay (tests/devices/test_scpi.py).

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts"


def personality_sections(personality: str) -> dict:
    return yaml.safe_load((TRANSCRIPTS / f"scpi_{personality}.yaml").read_text())


def personality_section(personality: str, name: str) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """(simulator options, exact (sent, reply) byte pairs) of one transcript section."""
    data = personality_sections(personality)[name]
    pairs = [
        (sent.encode(), None if reply is None else reply.encode())
        for sent, reply in data["exchanges"]
    ]
    return data["simulator"], pairs


SECTIONS = [
    (personality, name)
    for personality in ("34401a", "keithley2000")
    for name in personality_sections(personality)
]


@pytest.fixture
def open_socket():
    """Open ``socket://`` ports with plain pyserial (byte-exact, no VISA in between)."""
    ports = []

    def _open(port: int):
        conn = serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=5)
        ports.append(conn)
        return conn

    yield _open
    for conn in ports:
        conn.close()


@pytest.mark.parametrize(("personality", "section"), SECTIONS)
def test_personality_answers_its_transcript(personality, section, open_socket, wire):
    options, pairs = personality_section(personality, section)
    with serve_tcp(**options) as srv:
        wire.transcript(open_socket(srv.port), pairs, terminator=b"\n")


def test_personalities_are_known_and_the_default_stays_generic():
    assert PERSONALITIES == ("generic", "34401a", "keithley2000")
    assert type(ScpiInstrumentModel()) is ScpiInstrumentModel
    assert ScpiInstrumentModel().identity == IDN
    for name, idn in (
        ("34401a", "HEWLETT-PACKARD,34401A,0,11-5-2"),
        ("HP34401A", "HEWLETT-PACKARD,34401A,0,11-5-2"),
        ("keithley2000", "KEITHLEY INSTRUMENTS INC.,MODEL 2000,1234567,A08 /A02"),
    ):
        model = ScpiInstrumentModel(personality=name)
        assert model.identity == idn and isinstance(model, ScpiInstrumentModel)
    assert ScpiInstrumentModel(personality="34401a", serial="MY41000001").identity.split(",")[
        2
    ] == ("MY41000001")


def test_bad_personality_and_foreign_options_are_config_errors():
    with pytest.raises(ConfigError, match="no personality 'fluke8846a'.*34401a, keithley2000"):
        ScpiInstrumentModel(personality="fluke8846a")
    with pytest.raises(ConfigError, match="34401a SCPI simulator has no option source_limit"):
        ScpiInstrumentModel(personality="34401a", source_limit=5)  # a 34401A has no source
    with pytest.raises(ConfigError, match="generic SCPI simulator has no option input_voltage"):
        ScpiInstrumentModel(input_voltage=1.0)  # the generic meter reads its own source
    with pytest.raises(ConfigError, match="input_voltage must be a float"):
        with serve_tcp(personality="keithley2000", input_voltage="high"):
            pass


def test_a_generic_profile_fails_loudly_on_a_real_dmm():
    """What the generic meter answers, a 34401A refuses: a driver tested only against the generic
    meter must not pass against a 34401A by accident."""
    generic, hp = ScpiInstrumentModel(noise=0), ScpiInstrumentModel(personality="34401a")
    for line in ("SOUR:VOLT 1", "OUTP ON", "SYST:ERR:COUN?", "MEAS?"):
        generic.execute(line)
        assert hp.execute(line) is None
    assert [code for code, _ in hp.errors] == [-113, -113, -113, -113]
    assert generic.execute("FUNC?") is None and generic.errors[-1][0] == -113


def test_inputs_can_change_while_the_meter_runs(open_socket, wire):
    with serve_tcp(personality="keithley2000", noise=0, input_voltage=0.5) as srv:
        port = open_socket(srv.port)
        assert wire.query(port, b":READ?\n", b"\n") == b"+5.00000000E-01\n"
        srv.model.input_voltage = -12.5
        assert wire.query(port, b":READ?\n", b"\n") == b"-1.25000000E+01\n"
        assert wire.query(port, b":SENS:VOLT:DC:RANG?\n", b"\n") == b"+1.000000E+02\n"


def test_noise_scales_with_the_range_and_is_seeded():
    readings = []
    for _ in range(2):
        model = ScpiInstrumentModel(personality="34401a", noise=1e-3, seed=5, input_voltage=5.0)
        readings.append([float(model.execute("READ?")) for _ in range(20)])
    assert readings[0] == readings[1]  # the same seed, the same noise
    assert len(set(readings[0])) > 1 and all(abs(r - 5.0) < 0.01 for r in readings[0])


@pytest.mark.parametrize(
    ("personality", "size", "last"),
    [("34401a", 20, (-350, "Too many errors")), ("keithley2000", 10, (-350, "Queue overflow"))],
)
def test_error_queue_depth_and_overflow_of_each_personality(personality, size, last):
    model = ScpiInstrumentModel(personality=personality)
    for _ in range(size + 5):
        model.execute("BOGUS")
    assert len(model.errors) == size and model.errors[-1] == last


@pytest.mark.parametrize("personality", sorted(SCPI_SIM_PERSONALITY_RESOURCES))
def test_yaml_personalities(sim_rm, personality):
    meter = _open_sim(sim_rm, SCPI_SIM_PERSONALITY_RESOURCES[personality])
    options, pairs = personality_section(personality, "identity_and_errors")
    idn, no_error = pairs[0][1].decode().strip(), pairs[1][1].decode().strip()
    assert meter.query("*IDN?") == idn
    assert meter.query("SYST:ERR?") == no_error
    function = "FUNC" if personality == "34401a" else ":SENS:FUNC"
    first = "VOLT" if personality == "34401a" else "VOLT:DC"
    assert meter.query(f"{function}?") == f'"{first}"'
    meter.write(f'{function} "RES"')
    assert_silent(meter)
    assert meter.query(f"{function}?") == '"RES"'
    meter.write("FOO:BAR 1")
    assert_silent(meter)
    assert meter.query("SYST:ERR?") == '-113,"Undefined header"'
    assert meter.query("SYST:ERR?") == no_error


def test_cli_serves_a_personality_that_answers_its_transcript(open_socket, wire, sim_serve):
    options, pairs = personality_section("34401a", "functions")
    argv = ["scpi", "--personality", options.pop("personality")]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    with sim_serve(*argv) as (kind, address):
        assert kind == "scpi"
        _, host, port, _ = address.split("::")
        wire.transcript(open_socket(int(port)), pairs, terminator=b"\n")


@pytest.mark.parametrize("personality", ["34401a", "keithley2000"])
def test_autorange_off_stays_on_the_range_autorange_chose(personality):
    model = ScpiInstrumentModel(personality=personality, noise=0, input_voltage=1.5)
    assert model.execute("VOLT:DC:RANG?") == "+1.000000E+01"  # autorange: 1.5 V needs 10 V
    model.execute("VOLT:DC:RANG:AUTO OFF")
    assert model.execute("VOLT:DC:RANG?") == "+1.000000E+01"
    model.input_voltage = 150.0
    assert model.execute("READ?") == "+9.90000000E+37"  # fixed now: no move to 1000 V
