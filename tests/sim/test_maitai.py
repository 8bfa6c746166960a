"""MaiTai simulator: transcripts from INSTRUMENTS.md, the time-driven physics, faults, a real pty.

Most tests drive the simulator on a hand-advanced clock, so "after 30 s of warm-up" is exact and
costs no real time; two tests run on the real clock with a speed factor, one over a pseudo-terminal.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import serial
import yaml

from daqbridge.errors import ConfigError
from daqbridge.sim import create_simulator, serve_pty
from daqbridge.sim._core import Faults
from daqbridge.sim.maitai import IDN, MaiTaiSimulator

IDN_LINE = IDN.encode() + b"\n"
TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "maitai.yaml"


def transcript(section: str) -> tuple[dict, list[tuple[bytes, bytes | None]]]:
    """(simulator options, (sent, reply) pairs) of one section of tests/transcripts/maitai.yaml,
    the pairs the driver tests replay too."""
    data = yaml.safe_load(TRANSCRIPTS.read_text())[section]
    pairs = [(s.encode(), None if r is None else r.encode()) for s, r in data["exchanges"]]
    return data["simulator"], pairs


def sim_url(options: dict) -> str:
    # reply_latency=0: replies are due at once, so the transcript needs no waiting of its own.
    return "sim://maitai?" + urlencode({**options, "reply_latency": 0})


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make(**options) -> tuple[MaiTaiSimulator, ManualClock]:
    clock = ManualClock()
    return MaiTaiSimulator(clock=clock, **options), clock


def ask(sim: MaiTaiSimulator, clock: ManualClock, command: bytes, wait: float = 0.05) -> bytes:
    sim.write_from_host(command)
    clock.advance(wait)
    return sim.read_to_host()


def ready(**options) -> tuple[MaiTaiSimulator, ManualClock]:
    """Warm laser, emission on, shutter open."""
    sim, clock = make(warmed_up=True, **options)
    assert ask(sim, clock, b"ON\n") == b""
    assert ask(sim, clock, b"SHUTTER 1\n") == b""
    return sim, clock


# --- transcripts ---------------------------------------------------------------------------------


def test_identity_and_fixed_queries_exact_bytes():
    sim, clock = make()
    assert ask(sim, clock, b"*IDN?\n") == IDN_LINE
    assert ask(sim, clock, b"MODE?\n") == b"POW\n"
    assert ask(sim, clock, b"PLASER:POWER?\n") == b"13.43W\n"
    assert ask(sim, clock, b"READ:HUM?\n") == b"7.26%\n"
    assert ask(sim, clock, b"READ:HUMIDITY?\n") == b"7.26%\n"
    # the pump is off until emission is on
    assert ask(sim, clock, b"READ:PLASER:POWER?\n") == b"0.00W\n"
    assert sim.protocol_errors == []


@pytest.mark.parametrize(
    "query",
    [b"WAVELENGTH?", b"WAV?", b"wav?", b"READ:WAV?", b"read:wavelength?", b":READ:WAV?"],
)
def test_wavelength_query_forms(query):
    sim, clock = make(wavelength_nm=820)
    assert ask(sim, clock, query + b"\n") == b"820nm\n"


def test_set_commands_are_silent_and_do_not_desynchronise():
    sim, clock = ready()
    for command in (b"WAVELENGTH 850\n", b"WAV 860\n", b"SHUTTER 0\n", b"SHUT 1\n", b"OFF\n"):
        assert ask(sim, clock, command, wait=0.5) == b""
    # the next query gets exactly its own reply
    assert ask(sim, clock, b"SHUTTER?\n") == b"1\n"
    assert ask(sim, clock, b"*IDN?\n") == IDN_LINE
    assert sim.received_lines[-2:] == ["SHUTTER?", "*IDN?"]
    assert sim.protocol_errors == []


@pytest.mark.parametrize(
    "line", [b"BOGUS\n", b"WAV abc\n", b"SHUTTER 2\n", b"*IDN? extra\n", b"ON 1\n", b"WAV\n"]
)
def test_unknown_or_malformed_commands_are_silent_protocol_errors(line):
    sim, clock = make(warmed_up=True)
    assert ask(sim, clock, line) == b""
    assert len(sim.protocol_errors) == 1
    assert not sim.emission
    assert ask(sim, clock, b"*IDN?\n") == IDN_LINE


# --- terminators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
def test_any_input_terminator_gets_one_reply(ending):
    sim, clock = make()
    assert ask(sim, clock, b"*IDN?" + ending) == IDN_LINE
    assert ask(sim, clock, b"MODE?" + ending) == b"POW\n"
    assert sim.protocol_errors == []


def test_cr_and_lf_in_separate_writes_count_once():
    sim, clock = make()
    assert ask(sim, clock, b"*IDN?\r") == IDN_LINE  # answered without waiting for a LF
    assert ask(sim, clock, b"\nMODE?\r") == b"POW\n"
    assert ask(sim, clock, b"\n") == b""
    assert sim.received_lines == ["*IDN?", "MODE?"]


def test_several_commands_in_one_write():
    sim, clock = make(wavelength_nm=820)
    assert ask(sim, clock, b"MODE?\rWAV?\r\nSHUTTER?\n") == b"POW\n820nm\n0\n"


@pytest.mark.parametrize(
    ("option", "ending"), [("LF", b"\n"), ("CR", b"\r"), ("CRLF", b"\r\n"), ("crlf", b"\r\n")]
)
def test_reply_terminator_is_configurable(option, ending):
    sim, clock = make(reply_terminator=option)
    assert ask(sim, clock, b"*IDN?\n") == IDN.encode() + ending


def test_bad_reply_terminator_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="reply_terminator") as info:
        MaiTaiSimulator(reply_terminator="TAB")
    assert "LF" in str(info.value)


# --- warm-up -----------------------------------------------------------------------------------


def test_warm_up_ramps_and_refuses_emission_until_complete():
    sim, clock = make(warmup_s=60, reply_latency=0)
    assert ask(sim, clock, b"READ:PCTWARMEDUP?\n", wait=0) == b"0.00%\n"
    clock.advance(30)
    assert ask(sim, clock, b"READ:PCTWARMEDUP?\n", wait=0) == b"50.00%\n"
    assert ask(sim, clock, b"ON\n") == b""  # refused, and silent like every set command
    assert not sim.emission
    assert sim.refusals and "warming up" in sim.refusals[0]
    stb = int(ask(sim, clock, b"*STB?\n"))
    assert stb & 64 and not stb & 1 and not stb & 8
    assert int(ask(sim, clock, b"*STB?\n")) & 64 == 0  # latched bit cleared by reading it
    clock.advance(30)
    assert ask(sim, clock, b"READ:PCTWARMEDUP?\n") == b"100.00%\n"
    assert ask(sim, clock, b"ON\n") == b""
    assert sim.emission
    assert int(ask(sim, clock, b"*STB?\n")) == 1 | 2 | 8  # on, modelocked, warm; shutter closed


def test_warm_up_follows_the_speed_factor():
    sim, clock = make(warmup_s=60, speed=10, reply_latency=0)
    clock.advance(3)  # 30 s of device time
    assert ask(sim, clock, b"READ:PCTWARMEDUP?\n", wait=0) == b"50.00%\n"


def test_power_cycle_restarts_warm_up():
    sim, clock = ready(reply_latency=0)
    sim.power_cycle()
    assert ask(sim, clock, b"READ:PCTWARMEDUP?\n", wait=0) == b"0.00%\n"
    assert not sim.emission and not sim.shutter_open


# --- wavelength and power ------------------------------------------------------------------------


def test_wavelength_slews_then_settles_and_power_dips_while_tuning():
    sim, clock = ready(tuning_rate_nm_s=50, reply_latency=0)
    settled_800 = sim.output_power_w()
    assert ask(sim, clock, b"READ:POWER?\n", wait=0) == b"3.000W\n"
    assert ask(sim, clock, b"WAV 900\n", wait=0) == b""
    clock.advance(1.0)  # half way at 50 nm/s
    assert ask(sim, clock, b"READ:WAV?\n", wait=0) == b"850nm\n"
    assert ask(sim, clock, b"WAV?\n", wait=0) == b"900nm\n"  # the commanded value
    stb = int(ask(sim, clock, b"*STB?\n", wait=0))
    assert stb & 16 and not stb & 2  # tuning, so not modelocked
    tuning_power = sim.output_power_w()
    assert tuning_power == pytest.approx(0.2 * 3.0 * sim.gain(850))
    clock.advance(1.0)
    assert ask(sim, clock, b"READ:WAV?\n", wait=0) == b"900nm\n"
    assert not sim.is_tuning()
    settled_900 = sim.output_power_w()
    assert tuning_power < settled_900 < settled_800
    assert ask(sim, clock, b"READ:POWER?\n", wait=0) == f"{settled_900:.3f}W\n".encode()
    assert int(ask(sim, clock, b"*STB?\n", wait=0)) == 1 | 2 | 4 | 8


def test_new_target_during_a_slew_starts_from_where_the_laser_is():
    sim, clock = make(warmed_up=True, tuning_rate_nm_s=100)
    ask(sim, clock, b"WAV 1000\n", wait=1.0)  # 800 -> 900 so far
    assert sim.wavelength_nm() == pytest.approx(900)
    ask(sim, clock, b"WAV 850\n", wait=0.25)
    assert sim.wavelength_nm() == pytest.approx(875)
    clock.advance(1)
    assert sim.wavelength_nm() == 850


def test_out_of_range_wavelength_is_ignored_and_flagged():
    sim, clock = make(warmed_up=True, wavelength_nm=820)
    for value in (b"1200", b"689.9", b"-5"):
        assert ask(sim, clock, b"WAV " + value + b"\n") == b""
        assert sim.target_wavelength_nm() == 820
        assert int(ask(sim, clock, b"*STB?\n")) & 32
        assert int(ask(sim, clock, b"*STB?\n")) & 32 == 0
    assert ask(sim, clock, b"WAV 1040\n") == b""  # the edges are valid
    assert sim.target_wavelength_nm() == 1040
    assert len(sim.refusals) == 3


def test_fractional_wavelength_is_reported_to_the_nanometre():
    sim, clock = make(warmed_up=True, speed=math.inf)
    assert ask(sim, clock, b"WAV 8.204E2\n") == b""
    assert ask(sim, clock, b"WAV?\n") == b"820nm\n"


def test_power_is_zero_unless_emitting_through_an_open_shutter():
    sim, clock = make(warmed_up=True)
    assert ask(sim, clock, b"READ:POWER?\n") == b"0.00000W\n"
    ask(sim, clock, b"SHUTTER 1\n")
    assert ask(sim, clock, b"POWER?\n") == b"0.00000W\n"  # shutter open, emission off
    ask(sim, clock, b"ON\n")
    assert ask(sim, clock, b"POWER?\n") == b"3.000W\n"
    assert ask(sim, clock, b"READ:PLASER:POWER?\n") == b"13.43W\n"
    ask(sim, clock, b"SHUTTER 0\n")
    assert ask(sim, clock, b"READ:POWER?\n") == b"0.00000W\n"
    assert sim.output_power_w() == 0.0


def test_gain_curve_peaks_near_800_nm_and_falls_off_smoothly():
    sim, _ = make()
    values = {nm: sim.gain(nm) for nm in range(690, 1041, 10)}
    assert max(values, key=values.get) == 800
    assert values[690] > 0.3 and values[1040] > 0.1  # still usable at the edges
    ordered = [values[nm] for nm in sorted(values)]
    rising = ordered[: ordered.index(1.0) + 1]
    falling = ordered[ordered.index(1.0) :]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)


# --- local mode ----------------------------------------------------------------------------------


def test_local_mode_accepts_and_ignores_shutter_commands():
    sim, clock = make(warmed_up=True, local_mode=True)
    assert ask(sim, clock, b"SHUTTER 1\n") == b""
    assert ask(sim, clock, b"SHUTTER?\n") == b"0\n"
    sim.set_local_mode(False)
    ask(sim, clock, b"SHUT 1\n")
    assert ask(sim, clock, b"SHUTTER?\n") == b"1\n"
    sim.set_local_mode(True)
    ask(sim, clock, b"SHUTTER 0\n")
    assert ask(sim, clock, b"SHUTTER?\n") == b"1\n"
    assert sum("local mode" in r for r in sim.refusals) == 2
    assert sim.protocol_errors == []


# --- latency and options -------------------------------------------------------------------------


def test_reply_latency_is_device_time():
    sim, clock = make(reply_latency=0.5)
    sim.write_from_host(b"*IDN?\n")
    clock.advance(0.4)
    assert sim.read_to_host() == b""
    clock.advance(0.2)
    assert sim.read_to_host() == IDN_LINE
    fast, fast_clock = make(reply_latency=0.5, speed=10)
    assert ask(fast, fast_clock, b"*IDN?\n", wait=0.06) == IDN_LINE


def test_options_given_as_text_through_the_registry():
    sim = create_simulator(
        "maitai",
        warmed_up="true",
        reply_terminator="CRLF",
        speed="10",
        local_mode="yes",
        wavelength_nm="900",
        reply_delay="0.25",
    )
    assert isinstance(sim, MaiTaiSimulator)
    assert sim.is_warmed_up() and sim.local_mode and sim.speed == 10
    assert sim.reply_terminator == b"\r\n" and sim.wavelength_nm() == 900
    assert sim.faults.reply_delay == 0.25


@pytest.mark.parametrize(
    ("option", "value"),
    [("warmup_s", "-1"), ("wavelength_nm", "500"), ("warmed_up", "maybe"), ("speed", "0")],
)
def test_bad_option_values_are_config_errors_naming_the_option(option, value):
    with pytest.raises(ConfigError, match=option):
        MaiTaiSimulator(**{option: value})


# --- faults of the engine ------------------------------------------------------------------------


def test_fault_reply_delay():
    sim, clock = make(faults=Faults(reply_delay=0.3))
    assert ask(sim, clock, b"*IDN?\n", wait=0.2) == b""
    clock.advance(0.2)
    assert sim.read_to_host() == IDN_LINE


def test_fault_drop_next():
    sim, clock = make()
    sim.faults.drop_next = 1
    assert ask(sim, clock, b"*IDN?\n") == b""
    assert ask(sim, clock, b"*IDN?\n") == IDN_LINE


def test_fault_garble_next():
    sim, clock = make(faults=Faults(seed=3))
    sim.faults.garble_next = 1
    garbled = ask(sim, clock, b"*IDN?\n")
    assert garbled != IDN_LINE and len(garbled) == len(IDN_LINE) and garbled.endswith(b"\n")
    assert sum(a != b for a, b in zip(garbled, IDN_LINE, strict=True)) == 1
    assert ask(sim, clock, b"*IDN?\n") == IDN_LINE


def test_fault_inject_stale():
    sim, clock = make(wavelength_nm=820)
    sim.inject_stale(b"3.000W\n")
    assert ask(sim, clock, b"WAV?\n") == b"3.000W\n820nm\n"


def test_fault_echo():
    sim, clock = make(faults=Faults(echo=True))
    assert ask(sim, clock, b"*IDN?\r\n") == b"*IDN?\n" + IDN_LINE
    assert ask(sim, clock, b"SHUTTER 1\n") == b"SHUTTER 1\n"  # echo only: set stays silent


def test_fault_stuck_swallows_commands_until_cleared():
    sim, clock = make(warmed_up=True)
    sim.faults.stuck = True
    assert ask(sim, clock, b"*IDN?\n", wait=1) == b""
    assert ask(sim, clock, b"ON\n") == b""
    assert not sim.emission  # swallowed, not executed
    sim.faults.stuck = False
    assert ask(sim, clock, b"*IDN?\n") == IDN_LINE


def test_fault_unplug_loses_pending_replies_and_input_until_replug():
    sim, clock = make(warmed_up=True, reply_latency=0.5)
    sim.write_from_host(b"*IDN?\n")
    sim.unplug()
    clock.advance(1)
    assert sim.read_to_host() == b""
    assert ask(sim, clock, b"SHUTTER 1\n") == b""
    sim.replug()
    assert ask(sim, clock, b"SHUTTER?\n", wait=1) == b"0\n"  # the command sent unplugged was lost
    assert ask(sim, clock, b"*IDN?\n", wait=1) == IDN_LINE


# --- real clock ----------------------------------------------------------------------------------


def test_settling_on_the_real_clock_with_a_speed_factor():
    sim = MaiTaiSimulator(warmed_up=True, speed=4, tuning_rate_nm_s=50, reply_latency=0)
    sim.write_from_host(b"WAV 900\n")  # 2 s of device time = 0.5 s real
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sim.write_from_host(b"READ:WAV?\n")
        reply = sim.wait_output(2.0)
        assert reply.endswith(b"nm\n")
        seen.append(int(reply[:-3]))
        if seen[-1] == 900:
            break
        time.sleep(0.01)
    assert seen[-1] == 900
    assert seen[0] < 900  # it did not jump there
    assert seen == sorted(seen)


def test_over_a_pty_with_pyserial():
    with serve_pty("maitai", warmed_up=True, speed=20, reply_terminator="CRLF") as port:
        with serial.Serial(port.path, 9600, timeout=3) as link:
            link.write(b"*IDN?\r")
            assert link.readline() == IDN.encode() + b"\r\n"
            link.write(b"ON\r\nSHUTTER 1\r\n")  # silent set commands
            link.write(b"SHUTTER?\r\n")
            assert link.readline() == b"1\r\n"
            link.write(b"READ:POWER?\r\n")
            assert link.readline() == b"3.000W\r\n"
            link.write(b"WAV 1000\r\n")
            link.write(b"*STB?\r\n")
            assert int(link.readline()) & 16  # tuning
        assert port.simulator.output_power_w() > 0
        assert port.errors == []


# --- the manual's whole command set (issue 14), pinned to tests/transcripts/maitai.yaml ---------


@pytest.mark.parametrize(
    "section",
    [
        "connect",
        "narrow_unit",
        "connect_while_tuning",
        "diagnostics_off",
        "diagnostics_on",
        "settings",
        "errors",
        "refresh",
    ],
)
def test_transcript(section, open_url, wire):
    options, pairs = transcript(section)
    port = open_url(sim_url(options))
    wire.transcript(port, pairs, terminator=b"\n")


def test_commanded_and_actual_wavelength_while_tuning():
    sim, clock = make(warmed_up=True, wavelength_nm=820, tuning_rate_nm_s=50, reply_latency=0)
    ask(sim, clock, b"WAVELENGTH 920\n", wait=1.0)  # half way
    assert ask(sim, clock, b"WAVELENGTH?\n", wait=0) == b"920nm\n"
    assert ask(sim, clock, b"READ:WAVELENGTH?\n", wait=0) == b"870nm\n"


def test_watchdog_turns_the_pump_off_when_the_host_goes_quiet():
    sim, clock = ready(reply_latency=0)
    assert ask(sim, clock, b"TIMER:WATCHDOG 3\n", wait=0) == b""
    clock.advance(2.5)
    assert int(ask(sim, clock, b"*STB?\n", wait=0)) & 1  # a query in time keeps it on
    clock.advance(2.5)
    assert int(ask(sim, clock, b"*STB?\n", wait=0)) & 1
    clock.advance(3.5)  # silence longer than the watchdog
    assert int(ask(sim, clock, b"*STB?\n", wait=0)) & 1 == 0
    assert ask(sim, clock, b"READ:POWER?\n", wait=0) == b"0.00000W\n"
    assert sim.watchdog_trips == 1
    assert ask(sim, clock, b"PLASER:HISTORY?\n", wait=0).startswith(b"000 001 ")


def test_watchdog_option_and_zero_disables_it():
    sim, clock = make(warmed_up=True, emission_on=True, watchdog_s=3, reply_latency=0)
    assert ask(sim, clock, b"TIMER:WATCHDOG?\n", wait=0) == b"3.00\n"
    assert ask(sim, clock, b"TIMER:WATCHDOG 0\n", wait=0) == b""
    clock.advance(3600)
    assert int(ask(sim, clock, b"*STB?\n", wait=0)) & 1


def test_unknown_commands_do_not_feed_the_watchdog():
    sim, clock = make(warmed_up=True, emission_on=True, watchdog_s=3, reply_latency=0)
    for _ in range(4):
        clock.advance(1.0)
        assert ask(sim, clock, b"NOT:A:COMMAND\n", wait=0) == b""
    assert sim.status_byte() & 1 == 0


def test_save_survives_a_power_cycle_and_unsaved_changes_do_not():
    sim, clock = make(warmed_up=True, speed=math.inf, reply_latency=0)
    for command in (b"MODE PPOW\n", b"PLASER:POWER 9.5\n", b"SAVE\n"):
        assert ask(sim, clock, command) == b""
    ask(sim, clock, b"WAVELENGTH 900\n")  # resets the pump to 13.43 W; not saved
    sim.power_cycle()
    assert ask(sim, clock, b"MODE?\n") == b"PPOW\n"
    assert ask(sim, clock, b"PLASER:POWER?\n") == b"9.50W\n"
    assert ask(sim, clock, b"WAVELENGTH?\n") == b"800nm\n"
    assert ask(sim, clock, b"READ:WAV?\n") == b"800nm\n"


def test_pump_power_sets_the_output_only_without_ir_power_regulation():
    sim, clock = ready(speed=math.inf, reply_latency=0)
    assert ask(sim, clock, b"READ:POWER?\n") == b"3.000W\n"
    ask(sim, clock, b"PLASER:POWER 6.715\n")  # half the factory pump power
    assert ask(sim, clock, b"READ:POWER?\n") == b"3.000W\n"  # MODE POW regulates the output
    ask(sim, clock, b"MODE PPOW\n")
    assert ask(sim, clock, b"READ:POWER?\n") == b"1.500W\n"
    ask(sim, clock, b"MODE PCUR\n")
    ask(sim, clock, b"PLASER:PCURRENT 30\n")
    assert ask(sim, clock, b"READ:PLASER:POWER?\n") == b"5.37W\n"
    assert ask(sim, clock, b"READ:PLASER:DIODE2:CURRENT?\n") == b"8.8A2\n"


def test_modelocker_disabled_means_not_modelocked():
    sim, clock = ready(reply_latency=0)
    assert int(ask(sim, clock, b"*STB?\n")) & 2
    ask(sim, clock, b"CONTROL:MLENABLE 0\n")
    assert int(ask(sim, clock, b"*STB?\n")) & 2 == 0
    ask(sim, clock, b"OFF\n")
    ask(sim, clock, b"ON\n")  # the pump coming on enables the modelocker again
    assert ask(sim, clock, b"CONTROL:MLENABLE?\n") == b"1\n"


@pytest.mark.parametrize(
    "line",
    [b"CONTROL:MLENABLE 2\n", b"TIMER:WATCHDOG soon\n", b"SYSTEM:ERR? 1\n", b"DIODE1?\n"],
)
def test_malformed_new_commands_are_silent_command_errors(line):
    sim, clock = make(warmed_up=True, reply_latency=0)
    assert ask(sim, clock, line) == b""
    assert len(sim.protocol_errors) == 1
    assert sim.errors() == [(129, "CMD_ERR")]


@pytest.mark.parametrize(
    "line",
    [
        b"CONTROL:PHASE 120\n",
        b"PLASER:PCURRENT -1\n",
        b"TIMER:WATCHDOG -3\n",
        b"SYST:COMM:SER:BAUD 1234\n",
    ],
)
def test_out_of_range_values_are_silent_execution_errors(line):
    sim, clock = make(warmed_up=True, reply_latency=0)
    assert ask(sim, clock, line) == b""
    assert sim.errors() == [(130, "EXE_ERR")]
    assert ask(sim, clock, b"SYSTEM:ERR?\n") == b"130, EXE_ERR\n"
    assert sim.protocol_errors == []


def test_error_queue_keeps_its_oldest_sixteen():
    sim, clock = make(warmed_up=True, reply_latency=0)
    ask(sim, clock, b"WAV 2000\n")
    for _ in range(20):
        ask(sim, clock, b"BOGUS\n")
    assert sim.errors() == [(130, "EXE_ERR")] + [(129, "CMD_ERR")] * 15


def test_bad_wavelength_range_options_are_config_errors():
    with pytest.raises(ConfigError, match="wavelength_min_nm"):
        MaiTaiSimulator(wavelength_min_nm=900, wavelength_max_nm=800)
    with pytest.raises(ConfigError, match="wavelength_nm"):
        MaiTaiSimulator(wavelength_min_nm=850, wavelength_max_nm=900)  # 800 nm start is outside


def test_cli_serve_answers_the_new_commands_over_a_pty(wire, sim_serve):
    options, pairs = transcript("narrow_unit")
    argv = ["maitai", "-o", "reply_latency=0"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    with sim_serve(*argv) as (kind, path):
        assert kind == "maitai"
        with serial.Serial(path, 9600, timeout=5) as port:
            wire.transcript(port, pairs, terminator=b"\n")
