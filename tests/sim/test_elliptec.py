"""Elliptec bus simulator: packet splitting, motion timing, latched faults, bus traps, a real pty.

Most tests run on a hand-advanced clock so motion timing is exact; the real-clock tests use a
speed factor and generous bounds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import serial
import yaml

from daqbridge.errors import ConfigError
from daqbridge.sim import create_simulator, serve_pty
from daqbridge.sim._core import Faults
from daqbridge.sim.elliptec import (
    BUSY_FRAME_S,
    PULSES_PER_DEG,
    TASK_SECONDS,
    ElliptecBusSimulator,
    from_hex32,
    to_hex32,
)

IN_2 = b"2IN0E1140051720231701016800023000\r\n"


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make(addresses=(2,), **options) -> tuple[ElliptecBusSimulator, ManualClock]:
    clock = ManualClock()
    return ElliptecBusSimulator(addresses=addresses, clock=clock, **options), clock


def ask(sim: ElliptecBusSimulator, clock: ManualClock, data: bytes, wait: float = 0.02) -> bytes:
    sim.write_from_host(data)
    clock.advance(wait)
    return sim.read_to_host()


def run_for(sim: ElliptecBusSimulator, clock: ManualClock, seconds: float) -> bytes:
    clock.advance(seconds)
    return sim.read_to_host()


# --- transcripts ---------------------------------------------------------------------------------


def test_identity_transcript_exact_bytes():
    sim, clock = make(addresses=[2, 3])
    assert ask(sim, clock, b"2in") == IN_2
    reply = ask(sim, clock, b"3in")
    assert reply == b"3IN0E1140051820231701016800023000\r\n"  # another serial, same model
    payload = reply[3:-2]
    assert len(payload) == 30
    assert int(payload[-8:], 16) == 143360 and int(payload[18:22], 16) == 360


def test_getters_exact_bytes():
    sim, clock = make()
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"
    assert ask(sim, clock, b"2gp") == b"2PO00000000\r\n"
    assert ask(sim, clock, b"2gv") == b"2GV64\r\n"
    assert ask(sim, clock, b"2gj") == b"2GJ00000F8E\r\n"  # 10 deg
    assert ask(sim, clock, b"2go") == b"2HO00000000\r\n"
    for motor in (b"1", b"2"):
        reply = ask(sim, clock, b"2i" + motor)
        assert reply.startswith(b"2I" + motor) and len(reply) == 3 + 22 + 2
    assert ask(sim, clock, b"2i3") == b"2GS03\r\n"  # an ELL14 has two motors
    assert ask(sim, clock, b"2gs") == b"2GS03\r\n"  # ... and the error is latched
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"
    assert sim.protocol_errors == []


def test_position_encoding():
    assert to_hex32(round(90 * PULSES_PER_DEG)) == "00008C00"
    assert to_hex32(round(45 * PULSES_PER_DEG)) == "00004600"
    assert to_hex32(round(-10 * PULSES_PER_DEG)) == "FFFFF072"
    assert from_hex32("FFFFDA9C") == -9572


def test_move_absolute_replies_when_the_motion_ends():
    sim, clock = make()
    assert ask(sim, clock, b"2ma00004600") == b""  # 45 deg at 300 deg/s: 0.2 s with settling
    assert sim.is_moving(2)
    assert ask(sim, clock, b"2gs") == b"2GS09\r\n"  # busy while moving
    assert 0 < sim.position_pulses(2) < 0x4600
    assert run_for(sim, clock, 0.2) == b"2PO00004600\r\n"
    assert not sim.is_moving(2)
    assert sim.position_deg(2) == pytest.approx(45)
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"
    assert ask(sim, clock, b"2gp") == b"2PO00004600\r\n"


def test_move_duration_follows_distance_velocity_and_speed_factor():
    sim, clock = make()
    sim.write_from_host(b"2ma00008C00")  # 90 deg: 0.3 s + 0.05 s
    assert run_for(sim, clock, 0.33) == b""
    assert run_for(sim, clock, 0.03) == b"2PO00008C00\r\n"
    clock.advance(1)
    assert ask(sim, clock, b"2sv32") == b"2GS00\r\n"  # 50 %
    assert ask(sim, clock, b"2gv") == b"2GV32\r\n"
    sim.write_from_host(b"2ma00000000")  # 90 deg back at half speed: 0.6 s + 0.05 s
    assert run_for(sim, clock, 0.6) == b""
    assert run_for(sim, clock, 0.06) == b"2PO00000000\r\n"
    fast, fast_clock = make(speed=10)
    fast.write_from_host(b"2ma00008C00")
    assert run_for(fast, fast_clock, 0.036) == b"2PO00008C00\r\n"


def test_move_relative_negative_and_home():
    sim, clock = make()
    sim.write_from_host(b"2mrFFFFF072")  # -10 deg
    assert run_for(sim, clock, 1) == b"2POFFFFF072\r\n"
    assert sim.position_deg(2) == pytest.approx(-10, abs=0.01)
    clock.advance(1)
    sim.write_from_host(b"2mr00004600")  # +45 from -10
    assert run_for(sim, clock, 1) == b"2PO" + to_hex32(0x4600 - 3982).encode() + b"\r\n"
    clock.advance(1)
    sim.write_from_host(b"2ho1")
    assert run_for(sim, clock, 1) == b"2PO00000000\r\n"


def test_stop_reports_where_the_mount_stopped_and_cancels_the_late_po():
    sim, clock = make()
    sim.write_from_host(b"2ma00008C00")
    clock.advance(0.15)
    reply = ask(sim, clock, b"2st")
    assert reply.startswith(b"2PO") and reply.endswith(b"\r\n")
    stopped = from_hex32(reply[3:11].decode())
    assert 0 < stopped < 0x8C00
    assert run_for(sim, clock, 2) == b""  # the abandoned move never reports
    assert sim.position_pulses(2) == stopped and not sim.is_moving(2)


def test_jog_uses_the_jog_step_or_runs_until_stopped():
    sim, clock = make()
    assert ask(sim, clock, b"2sj00008C00") == b"2GS00\r\n"
    assert ask(sim, clock, b"2gj") == b"2GJ00008C00\r\n"
    sim.write_from_host(b"2fw")
    assert run_for(sim, clock, 1) == b"2PO00008C00\r\n"
    sim.write_from_host(b"2bw")
    assert run_for(sim, clock, 1) == b"2PO00000000\r\n"
    ask(sim, clock, b"2sj00000000")
    sim.write_from_host(b"2fw")  # continuous
    clock.advance(0.5)
    assert sim.is_moving(2)
    reply = ask(sim, clock, b"2st")
    assert from_hex32(reply[3:11].decode()) > 0x8C00


def test_set_commands_reply_status_and_home_offset_and_save():
    sim, clock = make()
    assert ask(sim, clock, b"2so00001000") == b"2GS00\r\n"
    assert ask(sim, clock, b"2go") == b"2HO00001000\r\n"
    assert ask(sim, clock, b"2us") == b"2GS00\r\n"
    for bad in (b"2sv00", b"2sv65"):  # velocity must be 1-100 %
        assert ask(sim, clock, bad) == b"2GS04\r\n"
        assert ask(sim, clock, b"2gs") == b"2GS04\r\n"
    assert ask(sim, clock, b"2gv") == b"2GV64\r\n"


def test_change_address_answers_from_the_new_address():
    sim, clock = make(addresses=[2, 3])
    assert ask(sim, clock, b"2ca5") == b"5GS00\r\n"
    assert sim.addresses == ["5", "3"]
    assert ask(sim, clock, b"2gs") == b""
    assert ask(sim, clock, b"5in") == IN_2.replace(b"2IN", b"5IN")  # the serial moved with it
    assert ask(sim, clock, b"5caa") == b"AGS00\r\n"


# --- silence -------------------------------------------------------------------------------------


def test_absent_addresses_are_silent_and_not_errors():
    sim, clock = make(addresses=[2, 3, 8])
    for packet in (b"0gs", b"7in", b"Fgp", b"5ma00004600", b"4ho1"):
        assert ask(sim, clock, packet) == b""
    assert sim.protocol_errors == []
    assert ask(sim, clock, b"8gs") == b"8GS00\r\n"


@pytest.mark.parametrize(
    "garbage",
    [b"2maXYZ00000", b"Zgs", b"2zz", b"2GS", b"2sv6G", b"2caG", b"gs"],
)
def test_malformed_packets_are_silent_protocol_errors(garbage):
    sim, clock = make()
    assert ask(sim, clock, garbage) == b""
    assert sim.protocol_errors
    assert sim.position_pulses(2) == 0
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"  # the bus recovers at the next packet


def test_resynchronises_after_garbage_inside_one_write():
    sim, clock = make(addresses=[2, 3])
    assert ask(sim, clock, b"xx2gs?3gs") == b"2GS00\r\n3GS00\r\n"
    assert len(sim.protocol_errors) == 2


# --- stream splitting ----------------------------------------------------------------------------


def test_several_packets_in_one_write():
    sim, clock = make(addresses=[2, 3, 8])
    assert ask(sim, clock, b"2gs3gp8gv") == b"2GS00\r\n3PO00000000\r\n8GV64\r\n"
    assert ask(sim, clock, b"2sv323gv") == b"2GS00\r\n3GV64\r\n"


def test_cr_lf_between_packets_is_tolerated():
    sim, clock = make(addresses=[2, 3])
    assert ask(sim, clock, b"2gs\r\n3gs\r\n") == b"2GS00\r\n3GS00\r\n"
    assert ask(sim, clock, b"\r\n2gp\r3gp\n") == b"2PO00000000\r\n3PO00000000\r\n"
    assert sim.protocol_errors == []


def test_packets_split_across_writes():
    sim, clock = make(addresses=[2, 3])
    for byte in b"2ma000046003gs":
        sim.write_from_host(bytes([byte]))
    assert run_for(sim, clock, 0.02) == b"3GS00\r\n"
    assert run_for(sim, clock, 1) == b"2PO00004600\r\n"
    assert sim.protocol_errors == []


def test_home_direction_digit_versus_next_packet_address():
    sim, clock = make(addresses=[0, 1, 2])
    # '0' followed by a command is the next packet: 2ho + 0gs
    assert ask(sim, clock, b"2ho0gs") == b"0GS00\r\n"
    assert sim.received_lines[-2:] == ["2ho", "0gs"]
    clock.advance(1)
    # '0' followed by '0gs' is the direction: 2ho0 + 0gs
    ask(sim, clock, b"2ho00gs")
    assert sim.received_lines[-2:] == ["2ho0", "0gs"]
    clock.advance(1)
    ask(sim, clock, b"2ho11gs")
    assert sim.received_lines[-2:] == ["2ho1", "1gs"]
    clock.advance(1)
    ask(sim, clock, b"2ho1")
    ask(sim, clock, b"2ho\r\n")
    assert sim.received_lines[-2:] == ["2ho1", "2ho"]
    assert sim.protocol_errors == []


def test_incomplete_packet_times_out_with_a_latched_communication_timeout():
    sim, clock = make()
    assert ask(sim, clock, b"2ma0000") == b""
    clock.advance(2)
    assert ask(sim, clock, b"2gs") == b"2GS01\r\n"
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"
    assert sim.position_pulses(2) == 0
    assert any("communication timeout" in e for e in sim.protocol_errors)


# --- faults and quirks ---------------------------------------------------------------------------


def test_injected_status_is_latched_once():
    sim, clock = make()
    sim.inject_status(2, 0x0B)
    assert ask(sim, clock, b"2gs") == b"2GS0B\r\n"
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"


def test_out_of_range_move_replies_gs0c_and_latches_it():
    sim, clock = make()
    assert ask(sim, clock, b"2ma00030000") == b"2GS0C\r\n"  # beyond one revolution
    assert not sim.is_moving(2)
    assert ask(sim, clock, b"2gs") == b"2GS0C\r\n"
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"


def test_stall_ends_the_next_move_with_a_mechanical_timeout():
    sim, clock = make()
    sim.stall(2)
    sim.write_from_host(b"2ma00008C00")
    assert run_for(sim, clock, 1) == b"2GS02\r\n"
    assert sim.position_pulses(2) == 0x8C00 // 2
    assert ask(sim, clock, b"2gs") == b"2GS02\r\n"
    clock.advance(1)
    sim.write_from_host(b"2ma00008C00")  # only one move stalls
    assert run_for(sim, clock, 1) == b"2PO00008C00\r\n"


def test_a_move_sent_too_soon_after_the_previous_goes_to_zero():
    sim, clock = make()
    sim.write_from_host(b"2ma00008C00")
    clock.advance(0.2)
    sim.write_from_host(b"2ma00008C00")
    clock.advance(0.05)
    sim.write_from_host(b"2ma00004600")  # 50 ms after the previous move command
    assert run_for(sim, clock, 2) == b"2PO00000000\r\n"
    assert len(sim.spacing_violations) == 1


def test_command_spacing_quirk_can_be_switched_off_and_moves_retarget():
    sim, clock = make(enforce_command_spacing=False)
    sim.write_from_host(b"2ma00008C00")
    clock.advance(0.05)
    sim.write_from_host(b"2ma00004600")
    assert run_for(sim, clock, 2) == b"2PO00004600\r\n"  # one PO: the first move was replaced
    assert sim.spacing_violations == []


def test_late_po_interleaves_with_another_mounts_traffic():
    sim, clock = make(addresses=[2, 3])
    sim.write_from_host(b"2ma00004600")
    stream = b""
    for _ in range(30):
        stream += ask(sim, clock, b"3gs", wait=0.01)
    lines = stream.split(b"\r\n")[:-1]
    assert b"2PO00004600" in lines
    where = lines.index(b"2PO00004600")
    assert 0 < where < len(lines) - 1  # arrived unsolicited between two 3GS replies
    assert lines.count(b"3GS00") == 30


def test_fault_reply_delay():
    sim, clock = make(faults=Faults(reply_delay=0.3))
    assert ask(sim, clock, b"2gs", wait=0.2) == b""
    assert run_for(sim, clock, 0.2) == b"2GS00\r\n"


def test_replies_stay_in_order_when_the_reply_delay_drops():
    # One serial line: a reply sent late holds back every reply after it. Once the delay was
    # lowered, new replies used to overtake the delayed ones, which no real device does.
    sim, clock = make(faults=Faults(reply_delay=0.9))
    sim.write_from_host(b"2gp")  # answered at +0.9 s
    clock.advance(0.1)
    sim.faults.reply_delay = 0.0
    assert ask(sim, clock, b"2gs") == b""  # behind the delayed PO
    assert sim.replies_held_back() == 2
    assert run_for(sim, clock, 0.8) == b"2PO00000000\r\n2GS00\r\n"
    assert sim.replies_held_back() == 0
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"  # nothing delayed any more


def test_the_end_of_a_move_is_reported_after_a_reply_still_held_back():
    sim, clock = make(faults=Faults(reply_delay=0.3))
    sim.write_from_host(b"2ma00004600")  # 45 deg: the motion ends after 0.2 s
    sim.write_from_host(b"2gs")  # busy: GS09, held back until +0.3 s
    sim.faults.reply_delay = 0.0
    # Nobody read the line meanwhile: the PO of 0.2 s still goes out after the GS09.
    assert run_for(sim, clock, 1.0) == b"2GS09\r\n2PO00004600\r\n"


def test_fault_drop_next_can_lose_the_late_po():
    sim, clock = make()
    sim.write_from_host(b"2ma00004600")
    sim.faults.drop_next = 1
    assert run_for(sim, clock, 1) == b""
    assert sim.position_pulses(2) == 0x4600  # the move happened; only its report was lost
    assert ask(sim, clock, b"2gp") == b"2PO00004600\r\n"


def test_fault_garble_next():
    sim, clock = make(faults=Faults(seed=5))
    sim.faults.garble_next = 1
    garbled = ask(sim, clock, b"2in")
    assert garbled != IN_2 and len(garbled) == len(IN_2) and garbled.endswith(b"\r\n")
    assert ask(sim, clock, b"2in") == IN_2


def test_fault_inject_stale():
    sim, clock = make()
    sim.inject_stale(b"3PO00001000\r\n")
    assert ask(sim, clock, b"2gs") == b"3PO00001000\r\n2GS00\r\n"


def test_fault_echo():
    sim, clock = make(addresses=[2, 3], faults=Faults(echo=True), reply_latency=0)
    assert ask(sim, clock, b"2gs3gs") == b"2gs\r\n2GS00\r\n3gs\r\n3GS00\r\n"


def test_fault_stuck_unit_answers_nothing_until_power_cycled():
    sim, clock = make()
    sim.faults.stuck = True
    assert ask(sim, clock, b"2in", wait=1) == b""
    assert ask(sim, clock, b"2ma00004600", wait=2) == b""
    assert sim.position_pulses(2) == 0
    sim.faults.stuck = False
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"


def test_fault_unplug_during_a_move():
    sim, clock = make()
    sim.write_from_host(b"2ma00004600")
    sim.unplug()
    assert ask(sim, clock, b"2gs", wait=1) == b""  # deaf, and the PO went nowhere
    sim.replug()
    assert run_for(sim, clock, 0.1) == b""
    assert ask(sim, clock, b"2gp") == b"2PO00004600\r\n"  # the mount kept its own power


# --- options -------------------------------------------------------------------------------------


def test_addresses_in_every_accepted_spelling():
    assert make(addresses="2,3,A")[0].addresses == ["2", "3", "A"]
    assert make(addresses=["f", 0, "11"])[0].addresses == ["F", "0", "B"]
    sim = create_simulator("elliptec", addresses="2,3,8", speed="10", enforce_command_spacing="0")
    assert isinstance(sim, ElliptecBusSimulator)
    assert sim.addresses == ["2", "3", "8"] and sim.speed == 10
    assert not sim.enforce_command_spacing


@pytest.mark.parametrize("addresses", [[16], ["G"], [2, "2"], [-1], [True]])
def test_bad_addresses_are_config_errors(addresses):
    with pytest.raises(ConfigError, match="address"):
        ElliptecBusSimulator(addresses=addresses)


def test_helpers_reject_an_absent_address_clearly():
    sim, _ = make(addresses=[2, 3])
    with pytest.raises(ConfigError, match="mounts at 2, 3"):
        sim.position_deg(5)
    with pytest.raises(ConfigError, match="status code"):
        sim.inject_status(2, 300)


# --- real clock ----------------------------------------------------------------------------------


def test_real_clock_busy_while_moving_then_po():
    sim = ElliptecBusSimulator(addresses=[2], speed=5, reply_latency=0)
    sim.write_from_host(b"2sv01")  # 1 %: 90 deg takes 30 s of device time, 6 s real
    assert sim.wait_output(2) == b"2GS00\r\n"
    sim.write_from_host(b"2ma00008C00")
    sim.write_from_host(b"2gs")
    assert sim.wait_output(2) == b"2GS09\r\n"
    sim.write_from_host(b"2st")
    stopped = sim.wait_output(2)
    assert stopped.startswith(b"2PO") and from_hex32(stopped[3:11].decode()) < 0x8C00
    time.sleep(0.05)  # > 100 ms device time since the last move command
    sim.write_from_host(b"2sv64")
    assert sim.wait_output(2) == b"2GS00\r\n"
    sim.write_from_host(b"2ma00004600")  # 0.2 s device, 40 ms real
    assert sim.wait_output(5) == b"2PO00004600\r\n"


def test_over_a_pty_with_pyserial():
    with serve_pty("elliptec", addresses=[2, 3], speed=10) as port:
        with serial.Serial(port.path, 9600, timeout=3) as link:
            link.write(b"2in3gs")
            assert link.readline() == IN_2
            assert link.readline() == b"3GS00\r\n"
            link.write(b"2ma00008C00\r\n")
            link.write(b"2gs")
            assert link.readline() == b"2GS09\r\n"
            assert link.readline() == b"2PO00008C00\r\n"  # when the move ends
            link.write(b"7gs")  # absent: silence
            link.timeout = 0.3
            assert link.readline() == b""
        assert port.simulator.position_deg(2) == pytest.approx(90)
        assert port.errors == []


def test_packet_timeout_is_wire_time_not_scaled_by_the_motion_speed():
    # The sim lab runs at speed 20: motion is 20x faster, but a loaded host that writes a packet
    # in two pieces 0.2 s apart has not made the line faster. Scaled, the timeout was 50 ms and
    # the mount went silent (the driver then timed out after 1 s at start-up).
    sim, clock = make(speed=20.0)
    assert ask(sim, clock, b"2g", wait=0.2) == b""
    assert ask(sim, clock, b"s") == b"2GS00\r\n"
    assert sim.protocol_errors == []


# --- the maintenance commands (issue 14), pinned to tests/transcripts/elliptec.yaml ------------

TRANSCRIPTS = yaml.safe_load(
    (Path(__file__).parents[1] / "transcripts" / "elliptec.yaml").read_text(encoding="utf-8")
)


def test_maintenance_commands_answer_as_the_transcript():
    sim, clock = make()
    for sent, reply in TRANSCRIPTS["at_rest"]:
        got = ask(sim, clock, sent.encode())
        assert got == (reply or "").encode(), sent
        clock.advance(1)
    assert sim.protocol_errors == ["'2xx': bytes that start no Elliptec packet"]


@pytest.mark.parametrize("sent, busy, done", TRANSCRIPTS["long_runs"])
def test_long_runs_send_busy_frames_unprompted_then_their_reply(sent, busy, done):
    sim, clock = make()
    assert ask(sim, clock, sent.encode()) == b""  # nothing until the first busy frame
    frames = run_for(sim, clock, BUSY_FRAME_S)
    assert frames == busy.encode()
    assert ask(sim, clock, b"2gs") == b"2GS09\r\n"  # a gs meanwhile says busy too
    rest = run_for(sim, clock, TASK_SECONDS[sent[1:]])
    assert rest.endswith(done.encode())
    assert set(rest[: -len(done)].split(b"\r\n")) <= {b"2GS09", b""}
    assert run_for(sim, clock, 10 * BUSY_FRAME_S) == b""  # and nothing after the end
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"


def test_a_move_during_a_long_run_is_refused_busy_and_st_aborts_the_run():
    sim, clock = make()
    ask(sim, clock, b"2om")
    assert ask(sim, clock, b"2ma00004600") == b"2GS09\r\n"
    assert sim.position_pulses(2) == 0
    assert ask(sim, clock, b"2st") == b"2PO00000000\r\n"
    assert run_for(sim, clock, TASK_SECONDS["om"]) == b""  # aborted: no busy frame, no GS00
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"


def test_current_curve_replies_87_samples_after_busy_frames():
    sim, clock = make()
    ask(sim, clock, b"2c1")
    out = run_for(sim, clock, TASK_SECONDS["c1"]).split(b"\r\n")
    assert set(out[:-2]) == {b"2GS09"}
    curve = out[-2].decode()
    assert curve.startswith("2C1") and len(curve) == 3 + 87 * 12
    assert out[-1] == b""


def test_group_address_synchronises_a_move_then_lapses():
    sim, clock = make(addresses=(2, 3))
    assert ask(sim, clock, b"2ga5") == b"5GS00\r\n"
    assert ask(sim, clock, b"3ga5") == b"5GS00\r\n"
    assert ask(sim, clock, b"5ma00004600") == b""
    ends = run_for(sim, clock, 2.0)
    assert sorted(ends.split(b"\r\n")) == [b"", b"2PO00004600", b"3PO00004600"]
    clock.advance(1)
    assert ask(sim, clock, b"5gs") == b""  # the group lasted until that move only


def test_isolated_mount_ignores_the_bus_then_says_so():
    sim, clock = make()
    for sent, reply in TRANSCRIPTS["isolate"]:
        assert ask(sim, clock, sent.encode()) == (reply or "").encode(), sent
    assert run_for(sim, clock, 60.0) == b"2GS06\r\n"
    assert ask(sim, clock, b"2gs") == b"2GS00\r\n"


def test_connect_answers_as_the_transcript():
    # The native driver's connect (tests/devices/test_elliptec_async.py replays the same pairs).
    # The transcript's mount rests at 45 deg with a GS04 latched: reached here on the wire.
    sim, clock = make()
    sim.write_from_host(b"2ma00004600")
    assert run_for(sim, clock, 1) == b"2PO00004600\r\n"
    assert ask(sim, clock, b"2f20093") == b"2GS04\r\n"  # at_rest: a refused period latches 04
    clock.advance(1)
    for sent, reply in TRANSCRIPTS["connect"]:
        assert ask(sim, clock, sent.encode()) == reply.encode(), sent
    assert sim.protocol_errors == []


def test_a_three_character_period_is_an_incomplete_packet():
    # tl_elliptec sends "FFF" to restore the factory period; the manual's word is 4 characters.
    sim, clock = make()
    assert ask(sim, clock, b"2f1FFF") == b""
    clock.advance(2)
    assert ask(sim, clock, b"2gs") == b"2GS01\r\n"


def test_cli_serve_answers_the_maintenance_commands_over_a_pty(wire, sim_serve):
    # --addresses 2: the transcript's mount
    with sim_serve("elliptec", "-o", "speed=inf", "--addresses", "2") as (kind, path):
        assert kind == "elliptec"
        with serial.Serial(path, 9600, timeout=5) as port:
            pairs = [(s.encode(), r.encode() if r else None) for s, r in TRANSCRIPTS["at_rest"]]
            wire.transcript(port, pairs)
            # At infinite speed a long run ends at once: only its closing reply is left.
            wire.transcript(port, [(b"2om", b"2GS00\r\n")])


def test_a_single_mount_answers_at_the_factory_address_0(wire, sim_serve):
    # A new ELL14 leaves the factory at address 0 (ELLx protocol manual, "ca"): a driver that
    # assumes another address must meet silence here, as on a new unit.
    with sim_serve("elliptec", "-o", "speed=inf") as (_, path):
        with serial.Serial(path, 9600, timeout=5) as port:
            wire.transcript(port, [(b"0gs", b"0GS00\r\n"), (b"2gs", None)])
