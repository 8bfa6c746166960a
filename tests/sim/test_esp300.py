"""ESP300 simulator: exact wire transcripts, motion timing, queued errors, every fault switch."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import serial
import yaml

import daqbridge.sim as dsim
from daqbridge.sim.esp300 import ESP300Simulator

IDN = b"ESP300 Version 3.04 07/27/01\r\n"
TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "esp300.yaml"


def transcript_pairs(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of tests/transcripts/esp300.yaml (shared with the
    driver tests)."""
    data = yaml.safe_load(TRANSCRIPTS.read_text())
    return [
        (sent.encode(), None if reply is None else reply.encode()) for sent, reply in data[section]
    ]


def exchange(sim: ESP300Simulator, command: bytes) -> bytes:
    """Drive the simulator directly (fake-clock tests): write, then take what is readable."""
    sim.write_from_host(command)
    return sim.read_to_host()


def drain_errors(sim: ESP300Simulator) -> list[int]:
    codes = []
    for _ in range(20):
        code = int(exchange(sim, b"TE?\r\n"))
        if code == 0:
            return codes
        codes.append(code)
    raise AssertionError("TE? never returned 0")


# --- transcripts ----------------------------------------------------------------------------------


def test_transcript_identity_queries_and_silent_sets(open_url, wire):
    port = open_url("sim://esp300?speed=inf", baudrate=19200)
    wire.transcript(
        port,
        [
            (b"*IDN?\r\n", IDN),
            (b"VE?\r\n", IDN),
            (b"1TP\r\n", b"0.00000\r\n"),
            (b"1TP?\r\n", b"0.00000\r\n"),
            (b"1VA2.5\r\n", None),
            (b"1VA?\r\n", b"2.50000\r\n"),
            (b"1AC10\r\n", None),
            (b"1AC?\r\n", b"10.00000\r\n"),
            (b"1AG12.5\r\n", None),
            (b"1AG?\r\n", b"12.50000\r\n"),
            (b"2SL-5\r\n", None),
            (b"2SR25\r\n", None),
            (b"2SL?\r\n", b"-5.00000\r\n"),
            (b"2SR?\r\n", b"25.00000\r\n"),
            (b"3SN7\r\n", None),
            (b"3SN?\r\n", b"7\r\n"),
            (b"1MF\r\n", None),
            (b"1MO?\r\n", b"0\r\n"),
            (b"1MO\r\n", None),
            (b"1MO?\r\n", b"1\r\n"),
            (b"1PA12.345\r\n", None),
            (b"1MD?\r\n", b"1\r\n"),
            (b"1TP?\r\n", b"12.34500\r\n"),
            (b"1PR-2.5\r\n", None),
            (b"1TP\r\n", b"9.84500\r\n"),
            (b"1PA?\r\n", b"9.84500\r\n"),
            (b"1ST\r\n", None),
            (b"1WS0\r\n", None),
            (b"TE?\r\n", b"0\r\n"),
        ],
    )
    port.write(b"TB?\r\n")
    assert re.fullmatch(rb"0, \d+, NO ERROR DETECTED\r\n", port.read_until(b"\r\n"))


def test_commands_on_one_line_run_in_order(open_url, wire):
    port = open_url("sim://esp300?speed=inf")
    port.write(b"1PA1;2PA2;3PA-3;1TP?;2TP?;3TP?\r\n")
    replies = [port.read_until(b"\r\n") for _ in range(3)]
    assert replies == [b"1.00000\r\n", b"2.00000\r\n", b"-3.00000\r\n"]
    assert wire.silent(port)


def test_cr_alone_and_number_formats(open_url, wire):
    port = open_url("sim://esp300?speed=inf")
    wire.transcript(
        port,
        [
            (b"1PA+5\r", None),
            (b"1TP?\r", b"5.00000\r\n"),
            (b"1PA1e-3\r\n", None),
            (b"1TP\r\n", b"0.00100\r\n"),
            (b"1PA 7\r\n", None),
            (b"1TP\r\n", b"7.00000\r\n"),
        ],
    )


# --- motion ---------------------------------------------------------------------------------------


def test_trapezoid_profile_exact(fake_clock):
    # VA 5, AC = AG 20: 0.25 s ramps covering 0.625 each, 1.75 s at 5 units/s, 2.25 s in all.
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10\r\n")
    for t, expected in [(0.125, 0.15625), (1.0, 4.375), (2.125, 9.84375)]:
        fake_clock.t = 1000.0 + t
        assert sim.axis_position(1) == pytest.approx(expected)
        assert exchange(sim, b"1MD?\r\n") == b"0\r\n"
    fake_clock.t = 1000.0 + 2.25
    assert exchange(sim, b"1MD?\r\n") == b"1\r\n"
    assert exchange(sim, b"1TP?\r\n") == b"10.00000\r\n"


def test_short_move_is_triangular(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA-0.5\r\n")
    t_half = math.sqrt(2 * 0.25 / 20)  # accelerate over half the distance
    fake_clock.advance(t_half)
    assert sim.axis_position(1) == pytest.approx(-0.25)
    assert sim.is_moving(1)
    fake_clock.advance(t_half + 1e-9)
    assert not sim.is_moving(1) and sim.axis_position(1) == -0.5


def test_axes_move_concurrently(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10;2PA-10;3VA10\r\n")
    exchange(sim, b"3PA10\r\n")
    fake_clock.advance(1.0)
    assert sim.is_moving(1) and sim.is_moving(2) and sim.is_moving(3)
    assert sim.axis_position(1) == pytest.approx(4.375)
    assert sim.axis_position(2) == pytest.approx(-4.375)
    fake_clock.advance(0.5)  # axis 3 at VA 10 finishes first (1.5 s)
    assert not sim.is_moving(3) and sim.is_moving(1)


def test_true_position_follows_the_trajectory_through_moves_stops_and_rests(fake_clock):
    # The truth a test compares a recorded position with: where the axis was at a past time.
    sim = ESP300Simulator(clock=fake_clock, speed=2.0)
    t0 = fake_clock.t
    assert sim.true_position(1, t0 - 100.0) == 0.0  # at rest since power-up
    exchange(sim, b"1PA10\r\n")  # 2.25 device seconds: 1.125 real seconds at speed 2
    fake_clock.advance(0.5)  # 1.0 device second: 4.375
    exchange(sim, b"1ST\r\n")
    fake_clock.advance(1.0)
    exchange(sim, b"1PA0\r\n")
    fake_clock.advance(10.0)
    assert sim.true_position(1, t0 + 0.0625) == pytest.approx(0.15625)  # 0.125 device s
    assert sim.true_position(1, t0 + 0.5) == pytest.approx(4.375)
    assert sim.true_position(1, t0 + 1.0) == pytest.approx(4.375)  # stopped, not at 10
    assert sim.true_position(1, t0 + 1.5 + 0.0625) == pytest.approx(4.375 - 0.15625)
    assert sim.true_position(1, fake_clock.t) == 0.0 == sim.axis_position(1)
    assert sim.true_position(2, t0 + 1.0) == 0.0  # the other axis never moved
    sim.set_position(1, 3.0)
    assert sim.true_position(1, fake_clock.t) == 3.0


def test_md_is_0_while_moving_then_1_in_real_time(open_url, wire):
    port = open_url("sim://esp300?speed=20")
    port.write(b"1PA10\r\n")  # 2.25 s of device time, about 0.11 s of real time
    assert wire.query(port, b"1MD?\r\n") == b"0\r\n"
    mid = float(wire.query(port, b"1TP?\r\n"))
    assert 0.0 <= mid < 10.0
    deadline = time.monotonic() + 10
    while wire.query(port, b"1MD?\r\n") == b"0\r\n":
        assert time.monotonic() < deadline, "the move never ended"
        time.sleep(0.005)
    assert wire.query(port, b"1TP?\r\n") == b"10.00000\r\n"


def test_stop_freezes_the_axis_and_is_recorded(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10\r\n")
    fake_clock.advance(1.0)
    assert exchange(sim, b"1ST\r\n") == b""  # silent
    assert sim.stop_count == 1 and sim.stops == [1]
    fake_clock.advance(5.0)
    assert exchange(sim, b"1MD?\r\n") == b"1\r\n"
    assert exchange(sim, b"1TP?\r\n") == b"4.37500\r\n"
    assert "1ST" in sim.received_lines


def test_home_takes_time_and_ends_at_zero(fake_clock):
    sim = ESP300Simulator(clock=fake_clock, home_search_time=20.0)
    sim.set_position(1, 10.0)
    exchange(sim, b"1OR\r\n")
    fake_clock.advance(2.25)  # travelled back to 0, index search still running
    assert exchange(sim, b"1TP?\r\n") == b"0.00000\r\n"
    assert exchange(sim, b"1MD?\r\n") == b"0\r\n"
    fake_clock.advance(20.0)
    assert exchange(sim, b"1MD?\r\n") == b"1\r\n"
    exchange(sim, b"2OR4\r\n")
    assert sim.is_moving(2)
    exchange(sim, b"2OR9\r\n")
    assert drain_errors(sim) == [7]


def test_infinite_speed_moves_instantly():
    sim = dsim.create_simulator("esp300", speed="inf")
    exchange(sim, b"1PA100;1OR\r\n")
    assert exchange(sim, b"1MD?;1TP?\r\n") == b"1\r\n0.00000\r\n"


# --- WS: wait for stop --------------------------------------------------------------------------


def test_ws_holds_back_later_commands_until_the_axis_stops(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10\r\n")
    assert exchange(sim, b"1WS;1TP?\r\n") == b""
    assert exchange(sim, b"VE?\r\n") == b""  # a new line waits too
    assert exchange(sim, b"1ST\r\n") == b""  # and so does ST (pessimistic reading)
    assert sim.holding and sim.stop_count == 0
    fake_clock.advance(2.25)
    assert sim.read_to_host() == b"10.00000\r\n" + IDN
    assert sim.stop_count == 1 and not sim.holding


def test_ws_dwell_and_ws_without_axis(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    assert exchange(sim, b"1WS500;1TP?\r\n") == b""  # stopped axis: only the 500 ms dwell
    fake_clock.advance(0.49)
    assert sim.read_to_host() == b""
    fake_clock.advance(0.02)
    assert sim.read_to_host() == b"0.00000\r\n"
    exchange(sim, b"1PA1;2PA10\r\n")
    assert exchange(sim, b"WS;1MD?;2MD?\r\n") == b""
    fake_clock.advance(2.25)
    assert sim.read_to_host() == b"1\r\n1\r\n"


def test_ws_reply_arrives_when_motion_ends_over_a_pty(open_tty, wire):
    with dsim.serve_pty("esp300", speed=10) as server:
        port = open_tty(server.path, 19200, timeout=5)
        port.write(b"1PA10;1WS;1TP?\r\n")
        assert wire.silent(port, 0.05)  # 0.225 s of real motion at speed 10
        assert port.read_until(b"\r\n") == b"10.00000\r\n"
        assert server.errors == []


# --- queued errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"1XX5\r\n", 6),
        (b"HELLO\r\n", 6),
        (b"1PAabc\r\n", 7),
        (b"1PAnan\r\n", 7),
        (b"1VA-1\r\n", 7),
        (b"1VA500\r\n", 110),
        (b"1AC0\r\n", 7),
        (b"1SN12\r\n", 7),
        (b"1SL2000\r\n", 7),
        (b"4PA1\r\n", 9),
        (b"0TP?\r\n", 9),
        (b"PA1\r\n", 37),
        (b"1PA\r\n", 38),
        (b"1PA1001\r\n", 106),
        (b"2PA-1001\r\n", 207),
        (b"TE\r\n", 6),
        # the commands of issue 14, given what the manual calls a missing or bad parameter
        (b"1zz?\r\n", 6),
        (b"1ID\r\n", 38),
        (b"1IDmystage\r\n", 7),
        (b"1MDx\r\n", 7),
        (b"1DP1\r\n", 7),
        (b"1MT\r\n", 38),
        (b"1MT1.0\r\n", 7),
        (b"1MV\r\n", 38),
        (b"1MVx\r\n", 7),
        (b"1VU0\r\n", 7),
        (b"1VU500\r\n", 110),
        (b"1BA-1\r\n", 7),
        (b"1BA2\r\n", 7),
        (b"1SU0\r\n", 7),
        (b"1WP\r\n", 38),
        (b"1MF1\r\n", 7),
        (b"AB1\r\n", 7),
        (b"RS1\r\n", 7),
    ],
)
def test_bad_commands_queue_errors_and_never_reply(command, code):
    sim = ESP300Simulator(speed=math.inf)
    assert exchange(sim, command) == b""
    assert drain_errors(sim) == [code]
    assert exchange(sim, b"1TP?\r\n") == b"0.00000\r\n"  # nothing moved


def test_motor_off_and_disconnected_axis_errors():
    sim = dsim.create_simulator("esp300", speed="inf", disconnected_axes="3")
    exchange(sim, b"2MF;2PA5;2OR;3PA1;3MO\r\n")
    assert drain_errors(sim) == [213, 213, 308, 308]
    assert sim.axis_position(2) == 0.0 and not sim.motor_on(2) and not sim.motor_on(3)
    powered_off = ESP300Simulator(motors_on=False, speed=math.inf)
    exchange(powered_off, b"1PA1\r\n")
    assert drain_errors(powered_off) == [113]


def test_motor_off_during_motion_stops_the_axis(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10\r\n")
    fake_clock.advance(1.0)
    exchange(sim, b"1MF\r\n")
    fake_clock.advance(5)
    assert sim.axis_position(1) == pytest.approx(4.375)


def test_soft_limits_refuse_moves_without_moving():
    sim = ESP300Simulator(speed=math.inf)
    exchange(sim, b"1SL-1;1SR1;1PA2;1PR-3;1PA0.5\r\n")
    assert drain_errors(sim) == [106, 107]
    assert sim.axis_position(1) == 0.5


def test_tb_pops_code_timestamp_and_text(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    fake_clock.advance(451.322)
    exchange(sim, b"1MF;1PA1;9PA1\r\n")
    assert exchange(sim, b"TB?\r\n") == b"113, 451322, AXIS-1 MOTOR NOT ENABLED\r\n"
    assert exchange(sim, b"TB?\r\n") == b"9, 451322, AXIS NUMBER OUT OF RANGE\r\n"
    assert exchange(sim, b"TB?\r\n") == b"0, 451322, NO ERROR DETECTED\r\n"


def test_queue_error_and_queue_depth():
    sim = ESP300Simulator()
    sim.queue_error(108)
    assert drain_errors(sim) == [108]
    for code in range(1, 16):
        sim.queue_error(code)
    assert drain_errors(sim) == list(range(6, 16))  # the ten most recent survive
    with pytest.raises(ValueError):
        sim.queue_error(-1)


# --- faults ---------------------------------------------------------------------------------------


def test_fault_reply_delay(open_url, wire):
    port = open_url("sim://esp300?reply_delay=0.15", timeout=2)
    port.write(b"1TP?\r\n")
    assert wire.silent(port, 0.05)
    assert port.read_until(b"\r\n") == b"0.00000\r\n"


def test_fault_drop_next_and_drop_probability(open_url, wire):
    port = open_url("sim://esp300?drop_next=1", timeout=0.2)
    port.write(b"VE?\r\n")
    assert wire.silent(port)
    assert wire.query(port, b"VE?\r\n") == IDN
    port.simulator.faults.drop_probability = 1.0
    port.write(b"VE?\r\n")
    assert wire.silent(port)


def test_fault_garble(open_url, wire):
    port = open_url("sim://esp300?garble_next=1&seed=3")
    bad = wire.query(port, b"VE?\r\n")
    assert bad != IDN and bad.endswith(b"\r\n") and len(bad) == len(IDN)
    assert sum(a != b for a, b in zip(bad, IDN, strict=True)) == 1
    assert wire.query(port, b"VE?\r\n") == IDN

    def campaign() -> list[bytes]:
        p = open_url("sim://esp300?garble_probability=0.5&seed=11")
        return [wire.query(p, b"VE?\r\n") for _ in range(20)]

    first = campaign()
    assert first == campaign()  # a seeded fault campaign replays exactly
    assert 0 < sum(r != IDN for r in first) < 20


def test_fault_stale_bytes_come_before_the_reply(open_url, wire):
    port = open_url("sim://esp300?name=stage")
    dsim.lookup("stage").inject_stale(b"7\r\n")
    assert wire.query(port, b"1MD?\r\n") == b"7\r\n"  # a naive driver reads the stale line
    assert port.read_until(b"\r\n") == b"1\r\n"


def test_fault_echo(open_url, wire):
    port = open_url("sim://esp300?echo=1&speed=inf")
    wire.transcript(
        port, [(b"1PA1\r\n", b"1PA1\r\n"), (b"1TP?\r\n", b"1TP?\r\n"), (b"", b"1.00000\r\n")]
    )


def test_fault_stuck(open_url, wire):
    port = open_url("sim://esp300?stuck=true")
    port.write(b"1PA1\r\nVE?\r\n")
    assert wire.silent(port)
    port.simulator.faults.stuck = False
    assert wire.query(port, b"1TP?\r\n") == b"0.00000\r\n"  # swallowed commands never ran
    assert port.simulator.received_lines[:2] == ["1PA1", "VE?"]


def test_fault_byte_time(open_url, wire):
    port = open_url("sim://esp300?byte_time=1&baudrate=1200", timeout=3)
    t0 = time.monotonic()
    assert wire.query(port, b"VE?\r\n") == IDN
    assert time.monotonic() - t0 >= len(IDN) * 10 / 1200 * 0.9  # 0.25 s at 1200 baud


def test_fault_unplug_loses_input_and_pending_replies():
    sim = ESP300Simulator(faults=dsim.Faults(reply_delay=0.1))
    sim.write_from_host(b"VE?\r\n")
    sim.unplug()
    sim.write_from_host(b"1PA5\r\n")  # lost on the unplugged cable
    sim.replug()
    assert sim.wait_output(0.2) == b""
    assert sim.axis_position(1) == 0.0 and sim.unplug_count == 1


# --- a real tty -----------------------------------------------------------------------------------


def test_over_a_pty_with_pyserial(open_tty, wire):
    with dsim.serve_pty("esp300", speed=5, seed=1) as server:
        port = open_tty(server.path, 19200)
        wire.transcript(
            port,
            [
                (b"*IDN?\r\n", IDN),
                (b"1MO;2MO;1VA10\r\n", None),
                (b"1PA20;2PA-2\r\n", None),
                (b"1MD?\r\n", b"0\r\n"),
                (b"1WS;2WS;1TP?;2TP?\r\n", b"20.00000\r\n"),
                (b"", b"-2.00000\r\n"),
                (b"TE?\r\n", b"0\r\n"),
            ],
        )
        assert server.errors == [] and server.simulator.protocol_errors == []


# --- the rest of the command set (issue 14), pinned to tests/transcripts/esp300.yaml ----------


def test_transcript_of_the_driver_connect_pairs(open_url, wire):
    port = open_url("sim://esp300?speed=inf", baudrate=19200)
    wire.transcript(port, transcript_pairs("driver_connect"))
    wire.transcript(port, transcript_pairs("driver_refresh"))


def test_transcript_of_the_commands_answered_at_rest(open_url, wire):
    port = open_url("sim://esp300?speed=inf", baudrate=19200)
    wire.transcript(port, transcript_pairs("at_rest"))
    assert port.simulator.protocol_errors == []


def test_transcript_of_the_commands_answered_in_motion(open_url, wire):
    port = open_url("sim://esp300?speed=1", baudrate=19200)
    wire.transcript(port, transcript_pairs("in_motion"))
    sim = port.simulator
    assert sim.aborts == 1 and not sim.motor_on(1) and not sim.motor_on(2)


def test_abort_with_an_axis_prefix_aborts_every_axis(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10;2PA-10\r\n")
    fake_clock.advance(1.0)
    assert exchange(sim, b"1AB\r\n") == b""  # InstrumentKit's abort_motion sends 1AB
    fake_clock.advance(5.0)
    assert sim.axis_position(1) == pytest.approx(4.375)
    assert sim.axis_position(2) == pytest.approx(-4.375)
    assert exchange(sim, b"2PA0\r\n") == b""
    assert drain_errors(sim) == [213]  # motors are off after an abort


def test_dp_is_the_instantaneous_desired_position(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10\r\n")
    fake_clock.advance(1.0)
    assert exchange(sim, b"1DP?\r\n") == b"4.37500\r\n"
    assert exchange(sim, b"1PA?\r\n") == b"10.00000\r\n"  # the destination is PA?'s


def test_define_home_during_a_move_is_refused(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1PA10\r\n")
    fake_clock.advance(1.0)
    assert exchange(sim, b"1DH0\r\n") == b""
    assert drain_errors(sim) == [27]
    fake_clock.advance(5.0)
    assert exchange(sim, b"1TP?;1DH?\r\n") == b"10.00000\r\n0.00000\r\n"


def test_vu_below_va_refuses_the_next_move():
    sim = ESP300Simulator(speed=math.inf)
    assert exchange(sim, b"1VU2;1VU?;1PA5\r\n") == b"2.00000\r\n"
    assert drain_errors(sim) == [110]
    assert exchange(sim, b"1VA3\r\n") == b""
    assert drain_errors(sim) == [110]
    exchange(sim, b"1VA2;1PA5\r\n")
    assert drain_errors(sim) == [] and sim.axis_position(1) == 5.0


def test_mv_stops_at_the_software_limit_with_its_error(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    exchange(sim, b"1SR2;1MV+\r\n")
    fake_clock.advance(0.5)
    assert exchange(sim, b"1MV?\r\n") == b"0\r\n"
    fake_clock.advance(10.0)
    assert exchange(sim, b"1MV?;1TP?\r\n") == b"1\r\n2.00000\r\n"
    assert drain_errors(sim) == [106]


def test_mv_and_mt_stop_at_the_hardware_limit(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    sim.axes[1].right_hardware_limit = 3.0
    sim.axes[2].left_hardware_limit = -3.0
    exchange(sim, b"1MV+;2SL-5;2MT-\r\n")
    fake_clock.advance(0.5)
    assert exchange(sim, b"1MV?;2MT?\r\n") == b"0\r\n0\r\n"
    fake_clock.advance(10.0)
    assert exchange(sim, b"1TP?;2TP?;2MT?\r\n") == b"3.00000\r\n-3.00000\r\n1\r\n"
    assert drain_errors(sim) == [104]  # MV hit the switch; MT went there on purpose


def test_wp_holds_later_commands_until_the_position_is_reached(fake_clock):
    # VA 5, AC 20: 0.625 covered in the 0.25 s ramp, then 5 units/s: 5.0 is passed at 1.125 s.
    sim = ESP300Simulator(clock=fake_clock)
    assert exchange(sim, b"1PA10;1WP5;1TP?\r\n") == b""
    fake_clock.advance(1.12)
    assert sim.read_to_host() == b"" and sim.holding
    fake_clock.advance(0.005 + 1e-9)
    assert sim.read_to_host() == b"5.00000\r\n" and not sim.holding


def test_wp_for_a_position_the_axis_never_reaches_holds_for_good(fake_clock):
    sim = ESP300Simulator(clock=fake_clock)
    assert exchange(sim, b"1PA2;1WP5;VE?\r\n") == b""
    fake_clock.advance(3600.0)
    assert sim.read_to_host() == b"" and sim.holding
    assert sim.axis_position(1) == 2.0


def test_reset_loses_commands_while_the_controller_restarts(fake_clock):
    sim = ESP300Simulator(clock=fake_clock, reset_time=5.0)
    exchange(sim, b"1VU50;1PA10;2MF\r\n")
    fake_clock.advance(1.0)
    sim.queue_error(7)
    assert exchange(sim, b"RS;VE?\r\n") == b""
    assert not sim.is_moving(1) and sim.resets == 1
    fake_clock.advance(4.9)
    assert exchange(sim, b"VE?\r\n") == b""  # still booting: lost, not queued
    fake_clock.advance(0.2)
    assert exchange(sim, b"VE?;1TP?;1VU?;2MO?;TE?\r\n") == (
        IDN + b"0.00000\r\n200.00000\r\n1\r\n0\r\n"
    )


def test_stage_identity_options(open_url, wire):
    port = open_url("sim://esp300?stage_models=Unknown&stage_serials=SN1,SN2,SN3")
    wire.transcript(port, [(b"1ID?\r\n", b"Unknown, SN1\r\n"), (b"3ID?\r\n", b"Unknown, SN3\r\n")])
    with pytest.raises(ValueError, match="one per axis"):
        ESP300Simulator(stage_serials=("SN1", "SN2"))


def test_cli_sim_serve_answers_the_new_commands_on_a_pty(tmp_path, wire, sim_serve):
    link = tmp_path / "esp"
    with sim_serve("esp300", "--speed", "inf", "--link", str(link)) as (kind, path):
        assert (kind, path) == ("esp300", str(link))
        with serial.Serial(str(link), 19200, timeout=5) as port:
            wire.transcript(port, transcript_pairs("at_rest"))
