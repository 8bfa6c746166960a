"""Newport 1830-C simulator: exact transcripts, reply formats, ranges, echo, optics, faults."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import serial
import yaml

import daqbridge.sim as dsim
from daqbridge.errors import ConfigError
from daqbridge.sim.newport1830c import (
    Newport1830CSimulator,
    full_scale,
    short_scientific,
    silicon_responsivity,
)

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "newport1830c.yaml"


def transcript(section: str) -> tuple[dict, list[tuple[bytes, bytes | None]]]:
    """(simulator options, (sent, reply) pairs) of one section of
    tests/transcripts/newport1830c.yaml: the pairs the driver tests replay too."""
    data = yaml.safe_load(TRANSCRIPTS.read_text(encoding="utf-8"))[section]
    pairs = [
        (sent.encode(), None if reply is None else reply.encode())
        for sent, reply in data["exchanges"]
    ]
    return dict(data["simulator"]), pairs


def sim_url(options: dict) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"response_time": 0, **options}.items())
    return f"sim://newport1830c?{query}"


def exchange(sim: Newport1830CSimulator, command: bytes) -> bytes:
    """Write and take the output at once: these meters answer with response_time=0."""
    assert sim.response_time == 0
    sim.write_from_host(command)
    return sim.read_to_host()


@pytest.fixture
def meter() -> Newport1830CSimulator:
    return Newport1830CSimulator(noise=0, response_time=0)


@pytest.mark.parametrize(
    ("watts", "text"),
    [
        (0.75e-9, "+.75E-9"),
        (5e-9, "5E-9"),
        (0.11e-9, "+.11E-9"),
        (1.234e-3, "+.1234E-2"),
        (-0.75e-9, "-.75E-9"),
        (-5e-9, "-5E-9"),
        (9.99996e-10, "1E-9"),
        (0.0, "0E0"),
    ],
)
def test_short_scientific_notation(watts, text):
    assert short_scientific(watts) == text
    assert float(text) == pytest.approx(watts, rel=1e-4, abs=1e-15)


def test_transcript_settings_and_silent_sets(open_url, wire):
    port = open_url("sim://newport1830c?noise=0&response_time=0", timeout=1)
    wire.transcript(
        port,
        [
            (b"W?\n", b"0800\n"),
            (b"W0633\n", None),
            (b"W?\n", b"0633\n"),
            (b"U?\n", b"1\n"),
            (b"U2\n", None),
            (b"U?\n", b"2\n"),
            (b"R5\n", None),
            (b"R?\n", b"5\n"),
            (b"A?\n", b"0\n"),
            (b"A1\n", None),
            (b"A?\n", b"1\n"),
            (b"F?\n", b"3\n"),
            (b"F1\n", None),
            (b"F?\n", b"1\n"),
            (b"B0\n", None),
            (b"B1\n", None),
            (b"G1\n", None),
            (b"Z0\n", None),
            (b"C\n", None),
            (b"E0\n", None),
        ],
        terminator=b"\n",
    )


def test_crlf_input_is_tolerated(open_url, wire):
    port = open_url("sim://newport1830c?noise=0")
    assert wire.query(port, b"W?\r\n", b"\n") == b"0800\n"
    assert port.simulator.protocol_errors == []


def test_power_in_watts_and_dbm(meter):
    for watts, reply in [(0.75e-9, b"+.75E-9\n"), (5e-9, b"5E-9\n"), (0.11e-9, b"+.11E-9\n")]:
        meter.set_input_power(watts)
        assert exchange(meter, b"D?\n") == reply
    meter.set_input_power(1e-3 * 10 ** (-1.524))
    assert exchange(meter, b"U2\nD?\n") == b"-15.24\n"
    meter.set_input_power(1e-3)
    assert exchange(meter, b"D?\n") == b"0.00\n"


def test_ranges_over_under_and_auto(meter):
    meter.set_input_power(1e-6)
    assert exchange(meter, b"D?\nR?\n") == b"1E-6\n4\n"  # auto picked R4 (2.5 uW full scale)
    assert exchange(meter, b"R1\nD?\n") == b"OVER\n"
    assert exchange(meter, b"R8\nD?\n") == b"UNDER\n"  # below 1 % of 25 mW
    assert exchange(meter, b"R5\nD?\n") == b"1E-6\n"
    meter.set_input_power(0.0)
    assert exchange(meter, b"R1\nD?\n") == b"0E0\n"  # the most sensitive range shows zero
    meter.set_input_power(1.0)
    assert exchange(meter, b"R0\nD?\n") == b"OVER\n"  # above R8 without the attenuator
    assert exchange(meter, b"A1\nD?\nR?\n") == b"1E0\n7\n"  # x1000 with the attenuator
    assert full_scale(8, False) == pytest.approx(25e-3) and full_scale(1, True) == 2.5e-6


def test_dynamic_range_resolution(meter):
    meter.set_input_power(1.234e-6)
    assert exchange(meter, b"R4\nD?\n") == b"+.1234E-5\n"  # full scale / 10000 = 0.25 nW steps
    assert exchange(meter, b"R5\nD?\n") == b"+.1235E-5\n"  # 2.5 nW steps
    assert exchange(meter, b"R6\nD?\n") == b"UNDER\n"  # below 1 % of 250 uW


def test_db_and_rel_use_the_reading_at_selection_as_reference(meter):
    meter.set_input_power(1e-6)
    exchange(meter, b"U3\n")
    meter.set_input_power(2e-6)
    assert exchange(meter, b"D?\n") == b"3.01\n"
    exchange(meter, b"U4\n")
    meter.set_input_power(1e-6)
    assert exchange(meter, b"D?\n") == b"5E-1\n"


def test_echo_mode_puts_the_command_before_the_value(meter):
    meter.set_input_power(5e-9)
    assert exchange(meter, b"E1\n") == b""  # received with echo off: not echoed
    assert exchange(meter, b"D?\n") == b"D?\n5E-9\n"
    assert exchange(meter, b"W0900\n") == b"W0900\n"  # set commands are echoed too
    assert exchange(meter, b"E0\n") == b"E0\n"
    assert exchange(meter, b"D?\n") == b"5E-9\n"


def test_echo_on_power_up_option(open_url, wire):
    port = open_url("sim://newport1830c?echo_on_power_up=1&noise=0&input_power=5e-9")
    assert wire.query(port, b"D?\n", b"\n") == b"D?\n"  # a driver that forgot E0 reads this
    assert port.read_until(b"\n") == b"5E-9\n"
    wire.transcript(port, [(b"E0\n", b"E0\n"), (b"D?\n", b"5E-9\n")], terminator=b"\n")


def test_unknown_and_invalid_commands_are_silent(meter):
    for command in (b"W0200\n", b"W800\n", b"U5\n", b"R9\n", b"X?\n", b"*IDN?\n"):
        assert exchange(meter, command) == b""
    assert len(meter.protocol_errors) == 6 and meter.wavelength == 800 and meter.units == 1


def test_hold_and_zero(meter):
    meter.set_input_power(2e-6)
    exchange(meter, b"G0\n")
    meter.set_input_power(1e-6)
    assert exchange(meter, b"D?\n") == b"2E-6\n"  # held
    exchange(meter, b"G1\nZ1\n")
    assert exchange(meter, b"D?\n") == b"0E0\n"  # dark offset subtracted
    meter.set_input_power(1.5e-6)
    assert exchange(meter, b"D?\n") == b"5E-7\n"
    exchange(meter, b"Z0\n")
    assert exchange(meter, b"D?\n") == b"+.15E-5\n"


def test_optical_input_callable_and_wavelength_responsivity():
    light = {"w": 1e-6}
    meter = dsim.create_simulator(
        "newport1830c",
        optical_input=lambda: light["w"],
        source_wavelength=800,
        noise=0,
        response_time=0,
    )
    assert float(exchange(meter, b"D?\n")) == pytest.approx(1e-6)
    light["w"] = 2e-6
    assert float(exchange(meter, b"D?\n")) == pytest.approx(2e-6)
    ratio = silicon_responsivity(800) / silicon_responsivity(633)
    assert float(exchange(meter, b"W0633\nD?\n")) == pytest.approx(2e-6 * ratio, rel=1e-3)
    assert ratio > 1.2  # the wrong W setting is visibly wrong, as on a real detector


def test_noise_is_seeded_and_scaled_by_filter():
    def readings(seed: int, filt: bytes) -> list[float]:
        m = Newport1830CSimulator(noise=0.01, noise_seed=seed, response_time=0)
        m.write_from_host(filt)
        return [float(exchange(m, b"D?\n")) for _ in range(200)]

    fast = readings(5, b"F3\n")
    assert fast == readings(5, b"F3\n")
    assert statistics.mean(fast) == pytest.approx(1e-6, rel=0.005)
    slow = readings(5, b"F1\n")
    assert statistics.stdev(slow) < statistics.stdev(fast) / 2


def test_replies_come_within_a_few_ms_not_instantly(open_url):
    port = open_url("sim://newport1830c?noise=0", timeout=1)
    assert port.simulator.response_time == 0.002
    port.write(b"W?\n")
    assert port.read_until(b"\n") == b"0800\n"


def test_constructor_validation():
    for option in ({"wavelength": "200"}, {"power_range": "9"}, {"units": "0"}, {"noise": "-1"}):
        with pytest.raises(ConfigError):
            dsim.create_simulator("newport1830c", **option)
    with pytest.raises(ValueError):
        Newport1830CSimulator().set_input_power(-1)


def test_faults_drop_and_garble(open_url, wire):
    port = open_url("sim://newport1830c?noise=0&drop_next=1&garble_next=1&seed=2", timeout=0.3)
    port.write(b"W?\n")
    assert wire.silent(port)
    garbled = wire.query(port, b"W?\n", b"\n")
    assert garbled != b"0800\n" and garbled.endswith(b"\n") and len(garbled) == 5
    assert wire.query(port, b"W?\n", b"\n") == b"0800\n"


def test_over_a_pty_with_pyserial(open_tty, wire):
    with dsim.serve_pty("newport1830c", noise=0, input_power=0.75e-9) as server:
        port = open_tty(server.path, 9600)
        wire.transcript(
            port,
            [
                (b"E0\n", None),
                (b"U1\n", None),
                (b"W0800\n", None),
                (b"D?\n", b"+.75E-9\n"),
                (b"R8\n", None),
                (b"D?\n", b"UNDER\n"),
                (b"R0\r\n", None),
                (b"U2\r\n", None),
                (b"D?\r\n", b"-61.25\n"),
            ],
            terminator=b"\n",
        )
        assert server.errors == [] and server.simulator.protocol_errors == []


# --- the manual's command set beyond the core (issue 14), pinned to tests/transcripts ---------


@pytest.mark.parametrize(
    "section",
    [
        "connect",
        "wavelength",
        "status",
        "queries",
        "point_valid",
        "point_saturated",
        "point_over_range",
        "refresh",
    ],
)
def test_transcript(open_url, wire, section):
    options, pairs = transcript(section)
    port = open_url(sim_url(options))
    wire.transcript(port, pairs, terminator=b"\n")


def test_unpadded_wavelength_keeps_the_calibration_and_flags_it(meter):
    meter.set_input_power(1e-6)
    meter.source_wavelength = 633
    assert exchange(meter, b"W0633\nD?\n") == b"1E-6\n"
    # W800 from a driver that does not pad: the meter stays at 633 nm, as W? and Q? show.
    assert exchange(meter, b"W800\nW?\nQ?\n") == b"0633\n129\n"
    assert meter.wavelength == 633


def test_saturation_clips_the_reading_and_latches_until_cleared(meter):
    meter.saturation_w = 2e-3
    meter.set_input_power(5e-3)
    assert exchange(meter, b"R8\nD?\nQ?\n") == b"2E-3\n132\n"
    meter.set_input_power(1e-3)
    assert exchange(meter, b"Q?\n") == b"132\n"  # latched: the saturation happened
    assert exchange(meter, b"C\nQ?\nD?\n") == b"128\n1E-3\n"
    assert exchange(meter, b"A1\n") == b""  # the attenuator keeps the detector out of saturation
    meter.set_input_power(0.5)
    assert exchange(meter, b"R0\nD?\nQ?\n") == b"5E-1\n128\n"


def test_busy_while_powering_up(fake_clock):
    meter = Newport1830CSimulator(noise=0, response_time=0, power_up_s=2.0, clock=fake_clock)
    assert exchange(meter, b"Q?\n") == b"160\n"  # busy + read done
    fake_clock.advance(2.5)
    assert exchange(meter, b"Q?\n") == b"160\n"  # latched until C
    assert exchange(meter, b"C\nQ?\n") == b"128\n"


def test_read_done_on_hold_clears_once_the_held_value_was_read(meter):
    assert exchange(meter, b"G0\nQ?\nD?\nQ?\n") == b"128\n1E-6\n0\n"
    assert exchange(meter, b"G1\nQ?\n") == b"128\n"


def test_store_reference_for_rel(meter):
    meter.set_input_power(2e-6)
    exchange(meter, b"U4\n")
    meter.set_input_power(1e-6)
    assert exchange(meter, b"S\nD?\n") == b"1E0\n"  # [In]: S takes the present reading


def test_cli_serve_answers_the_new_commands_over_a_pty(wire, sim_serve):
    options, pairs = transcript("status")
    argv = ["newport1830c"]
    for key, value in {"response_time": 0, **options}.items():
        argv += ["-o", f"{key}={value}"]
    with sim_serve(*argv) as (kind, path):
        assert kind == "newport1830c"
        with serial.Serial(path, 9600, timeout=5) as port:
            wire.transcript(port, pairs, terminator=b"\n")
